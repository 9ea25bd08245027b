"""How a positional-heads result is shown: PDS and content-invariance maps, primary labels and
traits (``posbench.heads``), offset profiles of the positional heads, and the reading tables."""

from __future__ import annotations

from posbench.heads import POSITIONAL_LABELS, label_table, primary_figure
from posbench.protocols import ProbeResult
from posbench.views import ProbeView


class PositionalHeadsView(ProbeView):
    probe = "positional-heads"

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        heads = result.tables["heads"]
        cols = ["layer", "head", "kv_head", "primary", "traits", "offset", "top_score_random", "top_score_natural",
                "content_invariance", "pds", "alpha0_natural"]
        positional = heads[heads.primary.isin(POSITIONAL_LABELS)][cols].round(3)
        induction = heads[heads.induction][["layer", "head", "kv_head", "induction_score", "duplicate_score", "alpha0_natural",
                                            "primary", "traits"]].round(3)
        return {"labels (primary: one per head; trait: every head that has it)": label_table(heads),
                "positional heads": positional, "induction heads": induction}

    @classmethod
    def figures(cls, result: ProbeResult):
        import plotly.express as px

        heads = result.tables["heads"]
        figs = {}
        for col, title, scale in (
            ("pds", "Position-dependence score (1 = attention set by relative offset alone)", "Viridis"),
            ("content_invariance", "Content invariance on random tokens (1 - mean JSD)", "Cividis"),
        ):
            grid = heads.pivot(index="layer", columns="head", values=col)
            figs[col] = px.imshow(grid, origin="lower", aspect="auto", zmin=0, zmax=1, color_continuous_scale=scale,
                                  labels={"x": "head", "y": "layer", "color": col}, title=title).update_xaxes(dtick=1)
        figs["classes"] = primary_figure(heads, "Primary label per head (mechanisms before sink; hover: every trait)")
        off = result.tables["offset_profile"]
        positional = heads[heads.primary.isin(POSITIONAL_LABELS)]
        pick = positional if len(positional) else heads.nlargest(6, "top_score_random")
        keys = {(int(r.layer), int(r.head)) for r in pick.head(12).itertuples()}
        sel = off[[(l, h) in keys for l, h in zip(off.layer, off["head"])]].copy()
        sel["head_id"] = [f"L{l}H{h} ({i})" for l, h, i in zip(sel.layer, sel["head"], sel["input"])]
        figs["offset_curves"] = px.line(
            sel, x="offset", y="attention", color="head_id", markers=True,
            title="Offset profiles P(d) of the positional heads (first token removed, rows renormalised)",
        )
        figs["pds_vs_ci"] = px.scatter(
            heads, x="content_invariance", y="pds", color="primary",
            hover_data=["layer", "head", "traits"], title="Content invariance vs position dependence",
        )
        return figs
