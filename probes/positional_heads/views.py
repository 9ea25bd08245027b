"""How a positional-heads result is shown: PDS and content-invariance maps, head classes,
offset profiles of the positional heads, and the head-class reading tables."""

from __future__ import annotations

from posbench.protocols import ProbeResult
from posbench.views import ProbeView

from .probe import POSITIONAL_CLASSES


class PositionalHeadsView(ProbeView):
    probe = "positional-heads"

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        heads = result.tables["heads"]
        cols = ["layer", "head", "kv_head", "class", "top_offset_random", "top_score_random", "top_score_natural",
                "content_invariance", "pds", "first_token_mass"]
        positional = heads[heads["class"].isin(POSITIONAL_CLASSES)][cols].round(3)
        induction = heads[heads.induction][["layer", "head", "kv_head", "induction_score", "duplicate_score", "class"]].round(3)
        counts = heads["class"].value_counts().rename_axis("class").reset_index(name="heads")
        return {"head classes": counts, "positional heads": positional, "induction heads": induction}

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
        figs["classes"] = px.scatter(
            heads, x="head", y="layer", color="class", symbol="class",
            hover_data=["kv_head", "top_offset_random", "top_score_random", "pds", "content_invariance",
                        "first_token_mass", "induction_score"],
            title="Head classes (first-token heads are set aside before the positional tests)",
        ).update_traces(marker={"size": 12})
        off = result.tables["offset_profile"]
        positional = heads[heads["class"].isin(POSITIONAL_CLASSES)]
        pick = positional if len(positional) else heads.nlargest(6, "top_score_random")
        keys = {(int(r.layer), int(r["head"])) for _, r in pick.head(12).iterrows()}
        sel = off[[(l, h) in keys for l, h in zip(off.layer, off["head"])]].copy()
        sel["head_id"] = [f"L{l}H{h} ({i})" for l, h, i in zip(sel.layer, sel["head"], sel["input"])]
        figs["offset_curves"] = px.line(
            sel, x="offset", y="attention", color="head_id", markers=True,
            title="Offset profiles P(d) of the positional heads (first token removed, rows renormalised)",
        )
        figs["pds_vs_ci"] = px.scatter(
            heads, x="content_invariance", y="pds", color="class",
            hover_data=["layer", "head"], title="Content invariance vs position dependence",
        )
        return figs
