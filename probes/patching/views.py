"""How a patching result is shown: one heatmap per swept site (normalised: 1 = clean,
0 = corrupted), the strongest patches and the pairs."""

from __future__ import annotations

from posbench.experiments.views import patch_heatmap
from posbench.protocols import ProbeResult
from posbench.views import ProbeView


class PatchingView(ProbeView):
    probe = "patching"

    @classmethod
    def figures(cls, result: ProbeResult):
        table, tokens = result.tables["patching"], result.tables["tokens"].token.tolist()
        mode = result.config.get("mode", "denoise")
        verb = "Denoising (corrupted run, clean patch)" if mode == "denoise" else "Noising (clean run, corrupted patch)"
        return {f"patch_{site}": patch_heatmap(part, tokens, f"{verb}: {site}; 1 = clean, 0 = corrupted")
                for site, part in table.groupby("site", sort=False)}

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        table = result.tables["patching"]
        base = 0.0 if result.config.get("mode", "denoise") == "denoise" else 1.0
        strongest = (table.assign(effect=(table.normalised - base).abs())
                     .sort_values("effect", ascending=False).groupby("site", sort=False).head(5)
                     .drop(columns="effect").round(4))
        pairs = result.tables["pairs"].round(3)
        return {"strongest patches (per site)": strongest, "pairs": pairs}
