"""How a position-bias result is shown: U curves with bootstrap bands, per-slot and per-label
bars for the choice tasks, the PriDe prior, the attention basin (layer x slot heatmaps) and
AttnRank's effect, plus small reading tables. Pure functions of the stored tables."""

from __future__ import annotations

import pandas as pd

from posbench.protocols import ProbeResult
from posbench.views import Finding, ProbeView, pct, verdict

RETRIEVAL = ("kv", "mdqa")
CURVES = {  # metric -> (mean, lo, hi, axis title)
    "accuracy": ("accuracy", "acc_lo", "acc_hi", "accuracy"),
    "gold_logp_norm": ("gold_logp_norm", "norm_lo", "norm_hi", "log p(gold) renormalised over the choices"),
}


def _band_figure(frame: pd.DataFrame, x: str, metric: str, title: str, xaxis: str):
    """One line per (task, n_segments) with its bootstrap interval as a shaded band."""
    import plotly.graph_objects as go

    mean, lo, hi, yaxis = CURVES[metric]
    fig = go.Figure()
    for (task, n), g in frame.groupby(["task", "n_segments"], sort=False):
        g = g.sort_values(x)
        name = f"{task}, {n} segments"
        if g[lo].notna().any():
            fig.add_trace(go.Scatter(x=list(g[x]) + list(g[x])[::-1], y=list(g[hi]) + list(g[lo])[::-1],
                                     fill="toself", opacity=0.2, line={"width": 0}, hoverinfo="skip",
                                     showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=g[x], y=g[mean], mode="lines+markers", name=name, legendgroup=name,
                                 customdata=g[["gold_slot", "n_items"]],
                                 hovertemplate="slot %{customdata[0]}, %{customdata[1]} items: %{y:.3f}"))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis)
    return fig


class PositionBiasView(ProbeView):
    probe = "position-bias"

    @classmethod
    def finding(cls, result: ProbeResult) -> Finding:
        """The U curve's ends against its middle, the MCQ label prior, the judge's flips in both
        protocols; compared with Liu et al. 2024, Zheng et al. 2024 and the judge swap test."""
        s, curve = result.summary, result.tables["u_curve"]
        sentences, checks = [], []
        for (task, n), g in curve[curve["task"].isin(RETRIEVAL)].groupby(["task", "n_segments"], sort=False):
            g = g.sort_values("gold_slot")
            acc = " / ".join(f"{a:.2f}" for a in g["accuracy"])
            slots = " / ".join(str(int(x)) for x in g["gold_slot"])
            primacy, dip = s.get(f"{task}.n{n}.primacy"), s.get(f"{task}.n{n}.middle_dip")
            sentences.append(f"{task}, {n} segments: accuracy {acc} with the answer in slot {slots}"
                             + (f" (renormalised log p(gold): primacy {primacy:+.2f}, middle dip {dip:+.2f})."
                                if primacy is not None and dip is not None else "."))
            if dip is not None:
                checks.append((f"{task} {'dips' if dip > 0 else 'does not dip'} in the middle ({n} segments)", dip > 0))
        if "mcq.pride_prior" in s:
            sentences.append(f"MCQ: PriDe label prior {s['mcq.pride_prior']} (uniform 0.25); most chosen label "
                             f"{s.get('mcq.most_chosen_label', '?')}, slot {s.get('mcq.most_chosen_slot', '?')}.")
            top = max(float(part.split("=")[1]) for part in s["mcq.pride_prior"].split())
            checks.append(("the label prior is not uniform" if top > 0.35 else "the label prior is near uniform",
                           top > 0.35))
        if "judge.flip_rate" in s:
            sentences.append(f"Judge: {pct(s['judge.flip_rate'])} of verdicts flip when the answers swap under fixed "
                             f"labels (first slot chosen {pct(s['judge.first_slot_rate'])}), "
                             f"{pct(s.get('judge.flip_rate_labels_move', float('nan')))} when the labels move with them.")
            checks.append(("the judge's verdicts depend on the order" if s["judge.flip_rate"] > 0.2
                           else "the judge's verdicts hardly depend on the order", s["judge.flip_rate"] > 0.2))
        published = ("Liu et al. 2024: accuracy is highest with the answer at the start or the end of the context and "
                     "lowest in the middle; Zheng et al. 2024: models prefer some option labels (a non-uniform PriDe "
                     "prior); LLM judges change verdicts when the answers swap (Zheng et al. 2023).")
        return Finding(sentences, published, verdict(checks), ["Liu et al. 2024", "Zheng et al. 2024", "Zheng et al. 2023"])

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        t = result.tables
        out = {}
        shape = t["shape"]
        shape = shape[shape["metric"].isin(["accuracy", "gold_logp_norm"]) & shape["stat"].isin(
            ["primacy", "recency", "middle_dip", "worst_slot", "spread"])]
        if len(shape):
            out["shape of the curves (95% bootstrap CIs)"] = shape.round(3)
        if "consistency" in t:
            out["permutation consistency"] = t["consistency"].round(3)
        if "pride" in t:
            out["multiple choice: PriDe (held-out items)"] = t["pride"].round(3)
            out["PriDe label prior"] = t["pride_prior"].round(3)
        if "judge" in t:
            out["judge order bias"] = t["judge"].round(3)
        if "attnrank" in t:
            out["AttnRank (held-out rows)"] = t["attnrank"].round(3)
        if "lengths" in t:
            out["prompt lengths"] = t["lengths"].round(1)
        return out

    @classmethod
    def compare(cls, results):
        """Lost in the middle on the same axes: accuracy by gold depth (0 = first segment, 1 = last),
        one line per model, one panel per retrieval task (its largest number of segments)."""
        import pandas as pd
        import plotly.express as px

        rows = []
        for model, r in results.items():
            curve = r.tables["u_curve"]
            curve = curve[curve["task"].isin(RETRIEVAL)]
            for task, g in curve.groupby("task", sort=False):
                g = g[g["n_segments"] == g["n_segments"].max()]
                rows.append(pd.DataFrame({"model": model, "task": f"{task} ({int(g['n_segments'].iloc[0])} segments)",
                                          "gold depth": g["gold_slot"] / max(int(g["n_segments"].iloc[0]) - 1, 1),
                                          "accuracy": g["accuracy"]}))
        if not rows:
            return {}
        frame = pd.concat(rows, ignore_index=True)
        return {"u_curves": px.line(
            frame, x="gold depth", y="accuracy", color="model", facet_col="task", markers=True, range_y=[0, 1.02],
            title="Lost in the middle: accuracy by the gold segment's depth (0 = first, 1 = last)")}

    @classmethod
    def figures(cls, result: ProbeResult):
        import plotly.express as px
        import plotly.graph_objects as go

        t = result.tables
        figs = {}
        curve = t["u_curve"]
        retrieval = curve[curve["task"].isin(RETRIEVAL)].copy()
        if len(retrieval):
            retrieval["depth"] = retrieval["gold_slot"] / (retrieval["n_segments"] - 1).clip(lower=1)
            for metric in CURVES:
                figs[f"u_curve_{metric}"] = _band_figure(
                    retrieval, "depth", metric, f"Lost in the middle: {CURVES[metric][3]} by the gold segment's position",
                    "gold position (0 = first segment, 1 = last)")
            sizes = t["lengths"][t["lengths"]["task"].isin(RETRIEVAL)]
            swept = retrieval.merge(sizes[["task", "n_segments", "prompt_tokens"]], on=["task", "n_segments"])
            for task, g in swept.groupby("task", sort=False):
                if g["n_segments"].nunique() < 2:
                    continue
                g = g.assign(tokens=g["prompt_tokens"].round().astype(int).astype(str) + " tokens ("
                             + g["n_segments"].astype(str) + " segments)", depth=g["depth"].round(2))
                grid = g.pivot_table(index="depth", columns="tokens", values="gold_logp_norm", sort=False)
                figs[f"length_sweep_{task}"] = px.imshow(
                    grid[sorted(grid.columns, key=lambda c: int(c.split()[0]))], origin="lower", aspect="auto",
                    color_continuous_scale="RdYlGn", labels={"x": "prompt length", "y": "gold depth",
                                                             "color": "log p(gold), renormalised"},
                    title=f"Context-length sweep ({task}): gold log-probability by length and depth")
        choice = curve[~curve["task"].isin(RETRIEVAL)]
        if len(choice):
            fig = go.Figure()
            for task, g in choice.groupby("task", sort=False):
                fig.add_trace(go.Bar(x=[f"slot {s}" for s in g["gold_slot"]], y=g["accuracy"], name=task,
                                     error_y={"type": "data", "symmetric": False, "array": g["acc_hi"] - g["accuracy"],
                                              "arrayminus": g["accuracy"] - g["acc_lo"]}))
            fig.update_layout(title="Accuracy by the correct option's slot (every label rotation)",
                              yaxis_title="accuracy", barmode="group")
            figs["choice_slots"] = fig
        if "selection" in t:
            sel = t["selection"].copy()
            fig = px.bar(sel, x="value", y="rate", color="by", facet_col="task", barmode="group",
                         hover_data=["n_chosen", "n_verdicts", "gold_rate"],
                         title="How often each label / slot is chosen (gold rate: dashed)")
            for i, (task, g) in enumerate(sel.groupby("task", sort=False), start=1):
                fig.add_hline(y=float(g["gold_rate"].mean()), line_dash="dash", col=i, row=1)
            figs["selection"] = fig
        if "pride_prior" in t:
            prior = t["pride_prior"]
            fig = px.bar(prior, x="meta_label", y="prior", title="PriDe prior over the option labels (uniform: dashed)",
                         labels={"meta_label": "label"})
            fig.add_hline(y=1 / len(prior), line_dash="dash")
            figs["pride_prior"] = fig
        if "judge" in t:
            judge = t["judge"].melt(id_vars=["protocol"], value_vars=["flip_rate", "first_slot_rate", "accuracy"])
            figs["judge"] = px.bar(judge, x="variable", y="value", color="protocol", barmode="group",
                                   title="Judge order bias: flips when the answers swap, first-slot preference")
        if "attention_profile" in t:
            prof = t["attention_profile"]
            for (task, n), g in prof[prof["segments"] == "all"].groupby(["task", "n_segments"], sort=False):
                grid = g.pivot(index="layer", columns="slot", values="mass")
                figs[f"basin_{task}_n{n}"] = px.imshow(
                    grid, origin="lower", aspect="auto", color_continuous_scale="Viridis",
                    labels={"x": "segment slot", "y": "layer", "color": "attention mass"},
                    title=f"Attention basin ({task}, {n} segments): mass from the answer position onto each slot",
                ).update_xaxes(dtick=1)
        if "attnrank" in t:
            figs["attnrank"] = px.bar(t["attnrank"], x="condition", y="gold_logp_norm", color="task",
                                      facet_col="n_segments", barmode="group", hover_data=["accuracy", "gold_slot", "n_items"],
                                      title="AttnRank: gold document in the most / least attended slot vs the sweep")
        return figs
