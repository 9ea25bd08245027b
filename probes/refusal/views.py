"""How a refusal result is shown: separation and probe accuracy per layer, the refusal trace
aligned at the decision token, one traced answer token by token, head attributions, and refusal
rates under each condition."""

from __future__ import annotations

import pandas as pd

from posbench.protocols import ProbeResult
from posbench.views import Finding, ProbeView, pct, verdict

TRACE_WINDOW = 48  # tokens before the decision token shown in the mean trace


class RefusalView(ProbeView):
    probe = "refusal"

    @classmethod
    def finding(cls, result: ProbeResult) -> Finding:
        t, s = result.tables, result.summary
        probe = t["candidates"][t["candidates"].position == -1].sort_values("layer")
        separated = probe[probe.probe_val_auroc >= 0.95]
        first = int(separated.layer.iloc[0]) if len(separated) else None
        sentences = [
            f"Harmful and harmless instructions: the logistic probe at the last template token reaches val AUROC "
            f"{probe.probe_val_auroc.max():.2f} (best layer {s['best_probe_layer']})"
            + (f", first >= 0.95 at layer {first}." if first is not None else "; it never reaches 0.95."),
            f"Chosen direction: layer {s['layer']}, template position {s['position']} ({s['position_token']!r}), "
            f"val AUROC {s['val_auroc']:.2f}.",
        ]
        behaviour = t["behaviour"].set_index(["condition", "label"])
        checks = [("harmful and harmless are linearly separable" if first is not None
                   else "harmful and harmless are not separable at AUROC 0.95", first is not None)]
        if ("baseline", "harmful") in behaviour.index and ("baseline", "harmless") in behaviour.index:
            harmful, harmless = behaviour.loc[("baseline", "harmful")], behaviour.loc[("baseline", "harmless")]
            sentences.append(
                f"Probe refusal rate at the decision token: {pct(harmful.probe_refusal_rate)} of harmful vs "
                f"{pct(harmless.probe_refusal_rate)} of harmless prompts; refusal phrases in "
                f"{pct(harmful.refusal_rate)} of harmful answers; cliff (instruction tail minus decision token) "
                f"{harmful.cliff:.2f}.")
            for condition, direction, claim in (("ablate-direction", -1, "ablating the direction lowers harmful refusal"),
                                                ("ablate-heads", 1, "ablating the suppressor heads raises harmful refusal")):
                if (condition, "harmful") in behaviour.index:
                    after = behaviour.loc[(condition, "harmful")].mean_refusal_score
                    before = harmful.mean_refusal_score
                    sentences.append(f"Under {condition}: mean harmful refusal score {before:.2f} -> {after:.2f}.")
                    checks.append((claim if (after - before) * direction > 0 else f"not: {claim}",
                                   (after - before) * direction > 0))
        published = ("Arditi et al. 2024: refusal is mediated by one direction that separates harmful from harmless "
                     "instructions in the middle layers, and ablating it removes refusal; Yin et al. 2025: refusal "
                     "intent collapses just before the answer, pushed down by a sparse set of heads whose ablation "
                     "restores refusal.")
        return Finding(sentences, published, verdict(checks), ["Arditi et al. 2024", "Yin et al. 2025"])

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        t = result.tables
        cand = t["candidates"]
        layer = cand.layer == result.summary["layer"]
        chosen = cand[layer & (cand.selected | (cand.position == -1))][
            ["layer", "position", "token", "selected", "direction_norm", "dim_val_auroc", "dim_val_accuracy",
             "dim_val_d", "probe_val_accuracy", "probe_val_auroc"]].round(4)
        behaviour = t["behaviour"][["condition", "label", "n", "refusal_rate", "refusal_lo", "refusal_hi",
                                    "probe_refusal_rate", "mean_probability", "mean_refusal_score", "cliff",
                                    "cliff_lo", "cliff_hi"]].round(4)
        heads = t["heads"]
        top = heads.sort_values("direct").head(10)[["layer", "head", "direct", "direct_sd", "causal", "ablated"]].round(4)
        answers = t["generations"][["condition", "label", "instruction", "response", "refused", "decision_probability"]].copy()
        answers["response"] = answers.response.str.slice(0, 120)
        return {"chosen direction (and the probe of its layer, at position -1)": chosen, "refusal by condition": behaviour,
                "heads pushing refusal down (direct, at the decision token)": top, "answers": answers.round(4)}

    @classmethod
    def compare(cls, results):
        """Refusal separability on the same axes: the probe's val AUROC and accuracy at the last
        template token by relative depth (layer / last layer), one line per model; and the
        baseline refusal rates, harmful vs harmless, of the probe at the decision token and of the
        phrase matcher on the answers, one bar per model and label."""
        import plotly.express as px

        layers, rates = [], []
        for model, r in results.items():
            probe = r.tables["candidates"]
            probe = probe[probe.position == -1].sort_values("layer")
            depth = probe.layer / max(int(probe.layer.max()), 1)
            for column, measure in (("probe_val_auroc", "val AUROC"), ("probe_val_accuracy", "val accuracy")):
                layers.append(pd.DataFrame({"model": model, "measure": measure, "relative depth": depth,
                                            "layer": probe.layer, "value": probe[column]}))
            base = r.tables["behaviour"]
            base = base[base.condition == "baseline"]
            for column, judge in (("probe_refusal_rate", "probe at the decision token"),
                                  ("refusal_rate", "refusal phrases in the answer")):
                rates.append(pd.DataFrame({"model": model, "judge": judge, "label": base.label,
                                           "refusal rate": base[column], "n": base.n}))
        figs = {"separability_by_depth": px.line(
            pd.concat(layers, ignore_index=True), x="relative depth", y="value", color="model", facet_col="measure",
            markers=True, hover_data=["layer"], range_y=[0, 1.02],
            title="Harmful vs harmless: the logistic probe at the last template token (val), "
                  "by relative depth (0 = first layer, 1 = last)")}
        rates = pd.concat(rates, ignore_index=True)
        if len(rates):
            figs["refusal_rates_by_model"] = px.bar(
                rates, x="model", y="refusal rate", color="label", facet_col="judge", barmode="group",
                hover_data=["n"], range_y=[0, 1.02], title="Baseline refusal rate, harmful vs harmless test instructions")
        return figs

    @classmethod
    def figures(cls, result: ProbeResult):
        import plotly.express as px

        t, s = result.tables, result.summary
        figs = {}
        cand = t["candidates"]
        direction = cand[cand.position == s["position"]].melt(
            id_vars="layer", value_vars=["dim_val_auroc", "dim_val_accuracy"], var_name="measure", value_name="value")
        probe = cand[cand.position == -1].melt(
            id_vars="layer", value_vars=["probe_val_accuracy", "probe_val_auroc"], var_name="measure", value_name="value")
        figs["separation_by_layer"] = px.line(
            pd.concat([direction, probe]), x="layer", y="value", color="measure", markers=True, range_y=[0, 1.02],
            title=f"Val separation per layer: the direction at template position {s['position']} "
                  f"({s['position_token']!r}), the probe at the last template token; chosen layer {s['layer']}",
        ).add_vline(x=s["layer"], line_dash="dot")
        grid = cand.pivot(index="layer", columns="position", values="dim_val_d")
        figs["candidates"] = px.imshow(
            grid, origin="lower", aspect="auto", color_continuous_scale="Viridis",
            labels={"x": "template position", "y": "layer", "color": "Cohen's d"},
            title="Difference-in-means candidates: val separation (Cohen's d) per layer and template position",
        )
        trace = t["trace"]
        window = trace[trace.rel >= -TRACE_WINDOW]
        for score, what in (("probability", "probe probability"), ("projection", "projection on the direction")):
            mean = window.groupby(["condition", "label", "rel"], as_index=False)[score].mean()
            figs[f"trace_{score}"] = px.line(
                mean, x="rel", y=score, color="label", line_dash="condition",
                labels={"rel": "tokens from the decision token (0 = last token before the answer)"},
                title=f"Refusal trace at layer {s['layer']}: mean {what}, aligned at the decision token",
            ).add_vline(x=0, line_dash="dot")
        example = trace[(trace.condition == "baseline") & (trace.label == "harmful") & (trace.item == trace.item.min())]
        figs["example_trace"] = px.scatter(
            example, x="index", y="probability", color="segment", hover_data=["token", "projection"],
            title="One harmful instruction, token by token (baseline): probe probability by segment",
        ).update_traces(mode="lines+markers")
        heads = t["heads"]
        if len(heads):
            figs["head_attribution"] = px.imshow(
                heads.pivot(index="layer", columns="head", values="direct"), origin="lower", aspect="auto",
                color_continuous_scale="RdBu", color_continuous_midpoint=0.0,
                labels={"x": "head", "y": "layer", "color": "direct"},
                title=f"Direct contribution of each head to the refusal projection at the decision token "
                      f"(harmful; ablated: {s['heads_ablated']})",
            ).update_xaxes(dtick=1)
        beh = t["behaviour"].copy()
        beh["err_hi"], beh["err_lo"] = beh.refusal_hi - beh.refusal_rate, beh.refusal_rate - beh.refusal_lo
        figs["refusal_rates"] = px.bar(
            beh, x="condition", y="refusal_rate", color="label", barmode="group", error_y="err_hi", error_y_minus="err_lo",
            range_y=[0, 1.02], title="Refusal rate (refusal-phrase matcher, Wilson interval) under each condition",
        )
        return figs
