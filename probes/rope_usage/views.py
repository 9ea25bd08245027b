"""How a rope-usage result is shown: q energy per pair and layer, frequency spectra by primary
label, q ~ k at each head's offset, DoPE band entropy against the sinks, wavelength against the
evaluated span, the p-RoPE band test with its turn angles, and the RoPE-base feasibility."""

from __future__ import annotations

import pandas as pd

from posbench.heads import LABELS, OFFSET_LABELS, POSITIONAL_LABELS
from posbench.protocols import ProbeResult
from posbench.rope_theory import feasibility_figure
from posbench.views import Finding, ProbeView, verdict


class RopeUsageView(ProbeView):
    probe = "rope-usage"
    labels = (
        (r"q_energy_share_lowest_quarter", "share of q energy (squared norm) in the lowest quarter of frequencies (0-1)"),
        (r"q_energy_share_highest_quarter", "share of q energy (squared norm) in the highest quarter of frequencies (0-1)"),
        (r"heads_(\w+)", "{0} heads (count)"),
        (r"(\w+)_heads_top_key_share_high_freq", "{0} heads: share of the top-key score from wavelengths < 32 tokens (0-1)"),
        (r"positional_heads", "positional heads (layer, head)"),
        (r"position_free_pairs_(\w+)", "{0} layers: rotary pairs turning < π/8 across the evaluated span / the layer's span"),
        (r"loss\[none\]", "next-token loss, no intervention (nats/token)"),
        (r"loss\[(.+)\]", "next-token loss, {0} (nats/token)"),
    )

    @classmethod
    def finding(cls, result: ProbeResult) -> Finding:
        s, heads = result.summary, result.tables["heads"]
        effects = result.tables["band_effects"].set_index("condition")
        low, high = s["q_energy_share_lowest_quarter"], s["q_energy_share_highest_quarter"]
        sentences = [f"q energy share: {low:.2f} in the lowest quarter of frequencies, {high:.2f} in the highest."]
        shares = {k: s.get(f"{k}_heads_top_key_share_high_freq") for k in ("positional", "content", "sink")}
        known = {k: v for k, v in shares.items() if v is not None}
        if known:
            sentences.append("Share of the top-key score from wavelengths < 32 tokens: " + ", ".join(
                f"{k} heads {v:.2f} ({int(s.get(f'heads_{k}', (heads.primary.isin(POSITIONAL_LABELS) if k == 'positional' else heads.primary == k).sum()))} heads)" for k, v in known.items()) + ".")
        lowest = [c for c in effects.index if c.startswith("position-free lowest")]
        highest = [c for c in effects.index if c.startswith("position-free highest")]
        if lowest and highest:
            dl, dh = effects.loc[lowest[0], "delta_loss"], effects.loc[highest[0], "delta_loss"]
            turn = effects.loc[lowest[0], "max_turn_over_span"]
            sentences.append(f"Making the lowest {float(lowest[0].split()[-1]):.0%} of frequencies position-free changes the next-token "
                             f"loss by {dl:+.3f} nats (that band turns at most {turn:.3g} rad over the evaluated span), "
                             f"the highest by {dh:+.3f} nats.")
        published = ("Barbero et al. 2025 (Gemma-7B): most of the q energy sits in the low frequencies, used as "
                     "position-free semantic channels; positional heads use the highest frequencies; removing the "
                     "lowest frequencies' rotation (p-RoPE) costs nothing.")
        checks = [(f"low-frequency q energy {'>' if low > high else '<='} high", low > high)]
        if known.get("positional") is not None and known.get("content") is not None:
            ok = known["positional"] > known["content"]
            checks.append((f"positional heads draw {'more' if ok else 'less'} from high frequencies than content heads", ok))
        if lowest and highest:
            ok = abs(dl) < 0.05 and dh > abs(dl)
            checks.append(("p-RoPE on the lowest quarter is free" if ok else "p-RoPE on the lowest quarter is not free", ok))
        return Finding(sentences, published, verdict(checks), ["Barbero et al. 2025"])

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        t = result.tables
        pairs = t["pairs"]
        rows = []
        for (span, context, base), g in pairs.groupby(["span", "context_span", "rope_base"], sort=False):
            layers = sorted(g.layer.unique())
            one = g[g.layer == layers[0]].sort_values("pair")
            picks = sorted({0, len(one) // 4, len(one) // 2, (3 * len(one)) // 4, len(one) - 1})
            for _, r in one.iloc[picks].iterrows():
                rows.append({
                    "layers": f"{len(layers)} layers (e.g. {layers[0]})", "RoPE base": f"{base:g}", "pair": int(r.pair),
                    "rad/token": f"{r.inv_freq:.3g}", "wavelength (tokens)": f"{r.wavelength:,.0f}",
                    "evaluated span": int(span), "turn over evaluated span (rad)": f"{r.rotation_over_span:.3g}",
                    "position-free in evaluated span": bool(r.position_free_in_span),
                    "context span": int(context), "turn over context (rad)": f"{r.rotation_over_context:.3g}",
                })
        heads = t["heads"]
        by_label = heads.groupby("primary").agg(
            heads=("head", "size"), q_energy_share_low_quarter=("q_energy_share_low_quarter", "mean"),
            q_energy_share_high_quarter=("q_energy_share_high_quarter", "mean"),
            top_key_share_high_freq=("top_key_share_high_freq", "mean"),
            qk_cos_low=("qk_cos_low", "mean"), qk_cos_high=("qk_cos_high", "mean"),
        ).reindex([x for x in LABELS if x in set(heads.primary)]).round(3).reset_index()
        qk = heads[heads.primary.isin(OFFSET_LABELS)][
            ["layer", "head", "primary", "traits", "qk_offset", "qk_cos_low", "qk_cos_high", "qk_cos_all",
             "qk_bound_ratio_high", "qk_bound_ratio_all", "qk_score", "qk_bound"]].round(3)
        effects = t["band_effects"][["condition", "max_turn_over_span", "loss", "delta_loss", "delta_loss_second_half",
                                     "positional_head_score", "delta_positional_score"]].round(4) \
            if "band_effects" in t else pd.DataFrame()
        dh = t["dope_heads"]
        dope = dh.groupby(["indicator", dh.sink_share > 0.5]).agg(
            heads=("head", "size"), entropy=("entropy", "mean"), spectral_share=("spectral_share", "mean"),
            outlier_bands=("outlier_bands", "mean"), alpha0=("alpha0_natural", "mean")).round(3).reset_index()
        dope = dope.rename(columns={"sink_share": "sink heads (majority)"})
        feas = t["base_feasibility"][["layer_type", "base", "span", "n_layers", "aliasing_bound", "dc_stability_bound",
                                      "dc_depth_bound", "precision_bound", "feasible", "margin_log10"]]
        out = {"frequency against span": pd.DataFrame(rows), "bands by primary label": by_label,
               "q ~ k at the offset heads' own offset": qk, "p-RoPE band test": effects,
               "DoPE band entropy: sink heads vs the rest": dope, "RoPE-base feasibility (config only)": feas.round(3)}
        return {name: table for name, table in out.items() if len(table)}

    @classmethod
    def figures(cls, result: ProbeResult):
        import plotly.express as px
        import plotly.graph_objects as go

        t = result.tables
        figs = {}
        hp, heads, pairs = t["head_pairs"], t["heads"], t["pairs"]
        grid = hp.groupby(["layer", "pair"], as_index=False).q_energy_share.mean().pivot(
            index="layer", columns="pair", values="q_energy_share")
        figs["q_energy_by_pair"] = px.imshow(
            grid, origin="lower", aspect="auto", color_continuous_scale="Viridis",
            labels={"x": "rotary pair (0 = highest frequency)", "y": "layer", "color": "share of |q|^2"},
            title="Share of the q energy (|q_p|^2 / |q|^2) per rotary pair and layer (cf. Barbero et al. Fig. 3)",
        )
        labelled = hp.merge(heads[["layer", "head", "primary"]], on=["layer", "head"])
        spectrum = labelled.groupby(["primary", "pair"], as_index=False).agg(
            top_key_share=("top_key_share", "mean"), wavelength=("wavelength", "median"))
        figs["spectrum_by_label"] = px.line(
            spectrum, x="wavelength", y="top_key_share", color="primary", markers=True, log_x=True,
            category_orders={"primary": list(LABELS)},
            labels={"wavelength": "wavelength (tokens, median over layers)", "top_key_share": "share of |score| on the top key"},
            title="Which frequencies each primary label draws its score from",
        )
        fig = go.Figure()
        for _, r in heads[heads.primary.isin(POSITIONAL_LABELS)].head(8).iterrows():
            sel = hp[(hp.layer == r.layer) & (hp["head"] == r["head"])]
            fig.add_trace(go.Scatter(x=sel.wavelength, y=sel.top_key_share, mode="lines+markers",
                                     name=f"L{r.layer}H{r['head']} ({r.primary})"))
        for _, r in heads[heads.primary == "content"].head(4).iterrows():
            sel = hp[(hp.layer == r.layer) & (hp["head"] == r["head"])]
            fig.add_trace(go.Scatter(x=sel.wavelength, y=sel.top_key_share, mode="lines", line={"dash": "dot"},
                                     name=f"L{r.layer}H{r['head']} (content)"))
        fig.update_layout(title="Per-head frequency spectra: share of the top-key score per pair",
                          xaxis={"type": "log", "title": "wavelength (tokens)"}, yaxis_title="share")
        figs["head_spectra"] = fig
        figs["qk_alignment"] = px.scatter(
            heads, x="qk_cos_low", y="qk_cos_high", color="primary", category_orders={"primary": list(LABELS)},
            hover_data=["layer", "head", "qk_offset", "traits", "qk_bound_ratio_all"], range_x=[-1, 1], range_y=[-1, 1],
            title="q ~ k (Barbero et al.): cosine of q_i and k_{i-d*} in the highest vs lowest frequency quarter",
        )
        dh = t["dope_heads"]
        figs["dope_vs_sink"] = px.scatter(
            dh, x="alpha0_natural", y="entropy", color="indicator", symbol="indicator",
            hover_data=["layer", "head", "primary", "spectral_share", "outlier_bands"],
            labels={"alpha0_natural": "first-key mass alpha_0 (mean over the head's query heads)",
                    "entropy": "DoPE head entropy H_h (nats, max log 2)"},
            title="DoPE band entropy of rotated q / k against the sink mass",
        )
        db = t["dope_bands"]
        ent = db[db.indicator == "k"].groupby(["layer", "band"], as_index=False).entropy.mean()
        figs["dope_band_entropy"] = px.imshow(
            ent.pivot(index="layer", columns="band", values="entropy"), origin="lower", aspect="auto",
            color_continuous_scale="Viridis", zmin=0, zmax=0.6931,
            labels={"x": "band = rotary pair (0 = highest frequency)", "y": "layer", "color": "entropy (nats)"},
            title="DoPE band entropy of the rotated keys (mean over KV heads; low = coherent spike)",
        )
        pl = pairs.copy()
        first_of_kind = pl.drop_duplicates(["span", "rope_base"]).layer.tolist()
        pl = pl[pl.layer.isin(first_of_kind)]
        pl["layer_kind"] = [f"L{l} {k} (evaluated span {s})" for l, k, s in zip(pl.layer, pl.layer_type, pl.span)]
        figs["turn_over_span"] = px.scatter(
            pl, x="pair", y="rotation_over_span", color="layer_kind", log_y=True, symbol="position_free_in_span",
            labels={"rotation_over_span": "turn across the evaluated span (rad)"},
            title="How far each pair turns across the span evaluated (below π/8: position-free there)",
        )
        if "band_effects" in t:
            figs["band_effects"] = px.bar(
                t["band_effects"], x="condition", y=["delta_loss", "delta_loss_second_half"], barmode="group",
                hover_data=["max_turn_over_span", "delta_positional_score"],
                title="p-RoPE band test: change in next-token loss (hover: the band's largest turn over the span)",
                labels={"value": "loss - baseline loss (nats/token)"},
            )
        figs["base_feasibility"] = feasibility_figure(t["base_feasibility"])
        return figs

    @classmethod
    def compare(cls, results):
        """q-norm band shares and the p-RoPE loss changes, side by side per model."""
        import plotly.express as px

        rows, effects = [], []
        for model, r in results.items():
            s = r.summary
            rows += [{"model": model, "band": "lowest quarter", "share of q energy": s["q_energy_share_lowest_quarter"]},
                     {"model": model, "band": "highest quarter", "share of q energy": s["q_energy_share_highest_quarter"]}]
            eff = r.tables["band_effects"]
            effects += [{"model": model, "condition": c, "loss change (nats/token)": d}
                        for c, d in zip(eff.condition, eff.delta_loss) if c != "none"]
        return {
            "rope_band_shares": px.bar(pd.DataFrame(rows), x="band", y="share of q energy", color="model", barmode="group",
                                       title="Share of q norm by frequency band (Barbero et al. 2025)"),
            "rope_band_effects": px.bar(pd.DataFrame(effects), x="condition", y="loss change (nats/token)", color="model",
                                        barmode="group", title="p-RoPE: change in next-token loss when a band stops rotating"),
        }
