"""How a positional-heads result is shown: PDS and content-invariance maps, primary labels and
traits (``posbench.heads``), offset profiles of the positional heads, and the reading tables."""

from __future__ import annotations

from posbench.heads import LABELS, POSITIONAL_LABELS, label_table, primary_figure
from posbench.protocols import ProbeResult
from posbench.views import Finding, ProbeView


_COLUMNS = {
    "kv_head": "KV head", "top_offset_random": "top offset (tokens)", "top_score_random": "P(top offset), random",
    "top_score_natural": "P(top offset), natural", "content_invariance": "content invariance", "pds": "PDS",
    "alpha0_natural": "first-token mass alpha_0", "induction_score": "induction score", "duplicate_score": "duplicate score",
}


class PositionalHeadsView(ProbeView):
    probe = "positional-heads"
    labels = (
        (r"heads_(.+)", "heads with the {0} trait (count)"),
        (r"primary_(.+)", "heads whose primary label is {0} (count)"),
        (r"induction_heads", "induction heads (layer, head: primary label; score ≥ 0.3)"),
        (r"positional_heads", "positional heads (layer, head: primary label(offset))"),
        (r"sink_and_mechanism_heads", "heads with a mechanism label that are sinks too (count)"),
        (r"mean_pds", "mean position-dependence score (0-1)"),
        (r"mean_content_invariance", "mean content invariance on random tokens (0-1)"),
    )

    @classmethod
    def finding(cls, result: ProbeResult) -> Finding:
        heads = result.tables["heads"]
        n = len(heads)
        counts = heads["primary"].value_counts()
        classes = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in LABELS)
        sentences = [f"Of {n} heads, by primary label: {classes}; {int(heads.sink.sum())} carry the sink trait, "
                     f"{int(heads.induction.sum())} the induction trait."]
        prev = heads[heads["primary"] == "previous-token"].sort_values("top_score_random", ascending=False)
        if len(prev):
            top = prev.iloc[0]
            sentences.append(
                f"Strongest previous-token head L{int(top.layer)}H{int(top['head'])}: P(1) = {top.top_score_random:.2f} on "
                f"random tokens, {top.top_score_natural:.2f} on natural text (first token removed).")
        positional = heads[heads["primary"].isin(POSITIONAL_LABELS)]
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

    @classmethod
    def compare(cls, results):
        """Share of heads in each class, one bar group per class, one colour per model."""
        import pandas as pd
        import plotly.express as px

        rows = []
        for model, r in results.items():
            heads = r.tables["heads"]
            share = heads["primary"].value_counts(normalize=True)
            rows += [{"model": model, "primary label": k, "share of heads": float(v), "heads": int((heads["primary"] == k).sum())}
                     for k, v in share.items()]
        frame = pd.DataFrame(rows)
        return {"head_classes_by_model": px.bar(
            frame, x="primary label", y="share of heads", color="model", barmode="group", hover_data=["heads"],
            title="Heads by primary label (share of each model's heads)")}
