"""How a patching result is shown: one heatmap per swept site (normalised: 1 = clean,
0 = corrupted), the strongest patches and the pairs."""

from __future__ import annotations

from posbench.experiments.views import patch_heatmap
from posbench.protocols import ProbeResult
from posbench.views import Finding, ProbeView


def _where(row) -> str:
    head = "" if row.isna()["head"] else f".H{int(row['head'])}"
    pos = "" if row.isna()["position"] else f" at position {int(row.position)}"
    return f"L{int(row.layer)}{head}{pos}"


class PatchingView(ProbeView):
    probe = "patching"
    labels = (
        (r"pairs", "prompt pairs used (count)"),
        (r"pairs_dropped", "prompt pairs dropped (count)"),
        (r"mode", "mode (denoise: clean patch into the corrupted run)"),
        (r"clean_logit_diff", "clean logit difference (answer - wrong, nats)"),
        (r"corrupted_logit_diff", "corrupted logit difference (answer - wrong, nats)"),
        (r"top_(\w+)", "strongest {0} patch (normalised: 1 = clean, 0 = corrupted)"),
    )

    @classmethod
    def finding(cls, result: ProbeResult) -> Finding:
        s, table = result.summary, result.tables["patching"]
        mode = result.config.get("mode", "denoise")
        sentences = [f"Over {s.get('pairs', '?')} prompt pairs the logit difference is {s['clean_logit_diff']:.2f} clean "
                     f"and {s['corrupted_logit_diff']:.2f} corrupted ({mode})."]
        base = 0.0 if mode == "denoise" else 1.0
        for site, part in table.groupby("site", sort=False):
            top = part.loc[(part.normalised - base).abs().idxmax()]
            sentences.append(f"Strongest {site} patch: {_where(top)} ({top.normalised:.2f}).")
        verdict = ""
        resid = table[(table.site == "resid_pre") & table.position.notna()]
        gap = abs(s["clean_logit_diff"] - s["corrupted_logit_diff"])
        if gap < 0.5:
            verdict = f"No verdict: the clean and corrupted runs differ by {gap:.2f} nats only (the model does not do the task)."
        elif len(resid) and mode == "denoise":
            layers = sorted(resid.layer.unique())
            first, last = layers[0], layers[-1]
            where = {layer: int(resid[resid.layer == layer].sort_values("normalised").iloc[-1].position) for layer in (first, last)}
            final = int(resid.position.max())
            moved = where[first] != final and where[last] == final
            verdict = (f"{'Agrees' if moved else 'Differs'}: the residual stream carries the answer at position "
                       f"{where[first]} in layer {first} and at position {where[last]} in layer {last}"
                       f"{' (the final position)' if where[last] == final else ''}.")
        published = ("Meng et al. 2022, Wang et al. 2022: in the residual stream the information that decides the "
                     "answer sits at the token that differs early on and moves to the final position in the middle "
                     "to late layers, carried there by a few attention heads.")
        return Finding(sentences, published, verdict, ["Meng et al. 2022", "Wang et al. 2022"])

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
