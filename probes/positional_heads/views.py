"""How a positional-heads result is shown: PDS and content-invariance maps, head classes,
offset profiles of the positional heads, and the head-class reading tables."""

from __future__ import annotations

from posbench.protocols import ProbeResult
from posbench.views import Finding, ProbeView

from .probe import POSITIONAL_CLASSES


_COLUMNS = {
    "kv_head": "KV head", "top_offset_random": "top offset (tokens)", "top_score_random": "P(top offset), random",
    "top_score_natural": "P(top offset), natural", "content_invariance": "content invariance", "pds": "PDS",
    "first_token_mass": "first-token mass", "induction_score": "induction score", "duplicate_score": "duplicate score",
}


class PositionalHeadsView(ProbeView):
    probe = "positional-heads"
    labels = (
        (r"heads_(.+)", "{0} heads (count)"),
        (r"induction_heads", "induction heads (count, score ≥ 0.3)"),
        (r"positional_heads", "positional heads (layer, head: class)"),
        (r"mean_pds", "mean position-dependence score (0-1)"),
        (r"mean_content_invariance", "mean content invariance on random tokens (0-1)"),
    )

    @classmethod
    def finding(cls, result: ProbeResult) -> Finding:
        heads = result.tables["heads"]
        n = len(heads)
        counts = heads["class"].value_counts()
        order = ("first-token", "previous-token", "self", "fixed-offset", "local-window", "content", "diffuse")
        classes = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in order)
        sentences = [f"Of {n} heads: {classes}; {int(heads.induction.sum())} induction heads."]
        prev = heads[heads["class"] == "previous-token"].sort_values("top_score_random", ascending=False)
        if len(prev):
            top = prev.iloc[0]
            sentences.append(
                f"Strongest previous-token head L{int(top.layer)}H{int(top['head'])}: P(1) = {top.top_score_random:.2f} on "
                f"random tokens, {top.top_score_natural:.2f} on natural text (first token removed).")
        positional = heads[heads["class"].isin(POSITIONAL_CLASSES)]
        if len(positional):
            sentences.append(f"Positional heads sit in layers {', '.join(map(str, sorted(set(positional.layer.astype(int)))))}; "
                             f"mean position-dependence score {heads.pds.mean():.2f} over all heads, "
                             f"{positional.pds.mean():.2f} over the positional ones.")
        published = ("Voita et al. 2019 and Olsson et al. 2022: trained transformers have a few positional heads "
                     "(previous-token above all) that attend by relative offset whatever the content, and induction "
                     "heads built on them; most other heads attend by content or sink on the first token.")
        has_prev, has_ind = len(prev) > 0, bool(heads.induction.any())
        if has_prev and has_ind:
            verdict = f"Agrees: {len(prev)} previous-token and {int(heads.induction.sum())} induction heads."
        elif has_prev or has_ind:
            verdict = "Partly agrees: " + ("previous-token heads but no induction head." if has_prev
                                           else "induction heads but no previous-token head.")
        else:
            verdict = "Differs: no previous-token or induction head (expected for an untrained or tiny model)."
        return Finding(sentences, published, verdict, ["Voita et al. 2019", "Olsson et al. 2022"])

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        heads = result.tables["heads"]
        cols = ["layer", "head", "kv_head", "class", "top_offset_random", "top_score_random", "top_score_natural",
                "content_invariance", "pds", "first_token_mass"]
        positional = heads[heads["class"].isin(POSITIONAL_CLASSES)][cols].round(3).rename(columns=_COLUMNS)
        induction = (heads[heads.induction][["layer", "head", "kv_head", "induction_score", "duplicate_score", "class"]]
                     .round(3).rename(columns=_COLUMNS))
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

    @classmethod
    def compare(cls, results):
        """Share of heads in each class, one bar group per class, one colour per model."""
        import pandas as pd
        import plotly.express as px

        rows = []
        for model, r in results.items():
            heads = r.tables["heads"]
            share = heads["class"].value_counts(normalize=True)
            rows += [{"model": model, "class": k, "share of heads": float(v), "heads": int((heads["class"] == k).sum())}
                     for k, v in share.items()]
        frame = pd.DataFrame(rows)
        return {"head_classes_by_model": px.bar(
            frame, x="class", y="share of heads", color="model", barmode="group", hover_data=["heads"],
            title="Heads by class (share of each model's heads)")}
