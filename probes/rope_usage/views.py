"""How a rope-usage result is shown: q norm per pair and layer, frequency spectra by head kind,
wavelength against span, p-RoPE band effects, and the reading tables."""

from __future__ import annotations

import pandas as pd

from posbench.protocols import ProbeResult
from posbench.views import Finding, ProbeView


class RopeUsageView(ProbeView):
    probe = "rope-usage"
    labels = (
        (r"q_norm_share_lowest_quarter", "share of q norm in the lowest quarter of frequencies (0-1)"),
        (r"q_norm_share_highest_quarter", "share of q norm in the highest quarter of frequencies (0-1)"),
        (r"heads_(\w+)", "{0} heads (count)"),
        (r"(\w+)_heads_top_key_share_high_freq", "{0} heads: share of the top-key score from wavelengths < 32 tokens (0-1)"),
        (r"positional_heads", "positional heads (layer, head)"),
        (r"position_free_pairs_(\w+)", "{0} layers: rotary pairs turning < π/8 across the span"),
        (r"loss\[none\]", "next-token loss, no intervention (nats/token)"),
        (r"loss\[(.+)\]", "next-token loss, {0} (nats/token)"),
    )

    @classmethod
    def finding(cls, result: ProbeResult) -> Finding:
        s, heads = result.summary, result.tables["heads"]
        effects = result.tables["band_effects"].set_index("condition")
        low, high = s["q_norm_share_lowest_quarter"], s["q_norm_share_highest_quarter"]
        sentences = [f"q norm share: {low:.2f} in the lowest quarter of frequencies, {high:.2f} in the highest."]
        shares = {k: s.get(f"{k}_heads_top_key_share_high_freq") for k in ("positional", "content", "sink")}
        known = {k: v for k, v in shares.items() if v is not None}
        if known:
            sentences.append("Share of the top-key score from wavelengths < 32 tokens: " + ", ".join(
                f"{k} heads {v:.2f} ({int(s.get(f'heads_{k}', (heads.kind == k).sum()))} heads)" for k, v in known.items()) + ".")
        lowest = [c for c in effects.index if c.startswith("position-free lowest")]
        highest = [c for c in effects.index if c.startswith("position-free highest")]
        if lowest and highest:
            dl, dh = effects.loc[lowest[0], "delta_loss"], effects.loc[highest[0], "delta_loss"]
            sentences.append(f"Making the lowest {float(lowest[0].split()[-1]):.0%} of frequencies position-free changes the next-token "
                             f"loss by {dl:+.3f} nats, the highest by {dh:+.3f} nats.")
        published = ("Barbero et al. 2025 (Gemma-7B): most of the q norm sits in the low frequencies, used as "
                     "position-free semantic channels; positional heads use the highest frequencies; removing the "
                     "lowest frequencies' rotation (p-RoPE) costs nothing.")
        checks = [(f"low-frequency q norm {'>' if low > high else '<='} high", low > high)]
        if known.get("positional") is not None and known.get("content") is not None:
            ok = known["positional"] > known["content"]
            checks.append((f"positional heads draw {'more' if ok else 'less'} from high frequencies than content heads", ok))
        if lowest and highest:
            ok = abs(dl) < 0.05 and dh > abs(dl)
            checks.append(("p-RoPE on the lowest quarter is free" if ok else "p-RoPE on the lowest quarter is not free", ok))
        word = "Agrees" if all(ok for _, ok in checks) else "Differs" if not any(ok for _, ok in checks) else "Partly agrees"
        return Finding(sentences, published, f"{word}: " + "; ".join(t for t, _ in checks) + ".", ["Barbero et al. 2025"])

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        pairs = result.tables["pairs"]
        rows = []
        for (span, base), g in pairs.groupby(["span", "rope_base"], sort=False):
            layers = sorted(g.layer.unique())
            one = g[g.layer == layers[0]].sort_values("pair")
            picks = sorted({0, len(one) // 4, len(one) // 2, (3 * len(one)) // 4, len(one) - 1})
            for _, r in one.iloc[picks].iterrows():
                rows.append({
                    "layers": f"{len(layers)} layers (e.g. {layers[0]})", "RoPE base": f"{base:g}", "span (tokens)": int(span),
                    "pair": int(r.pair), "rad/token": f"{r.inv_freq:.3g}", "wavelength (tokens)": f"{r.wavelength:,.0f}",
                    "wavelength / span": f"{r.wavelength / span:.3g}", "turn across span (rad)": f"{r.rotation_over_span:.3g}",
                    "position-free in span": bool(r.position_free_in_span),
                })
        kinds = result.tables["heads"].groupby("kind").agg(
            heads=("head", "size"), q_norm_share_low_quarter=("q_norm_share_low_quarter", "mean"),
            q_norm_share_high_quarter=("q_norm_share_high_quarter", "mean"),
            top_key_share_high_freq=("top_key_share_high_freq", "mean")).round(3).reset_index()
        effects = result.tables["band_effects"][["condition", "loss", "delta_loss", "positional_head_score", "delta_positional_score"]].round(4)
        return {"frequency against span": pd.DataFrame(rows), "bands by head kind": kinds, "p-RoPE band interventions": effects}

    @classmethod
    def figures(cls, result: ProbeResult):
        import plotly.express as px
        import plotly.graph_objects as go

        figs = {}
        hp, heads, pairs = result.tables["head_pairs"], result.tables["heads"], result.tables["pairs"]
        layer_norm = hp.groupby(["layer", "pair"], as_index=False).q_norm.mean()
        grid = layer_norm.pivot(index="layer", columns="pair", values="q_norm")
        figs["q_norm_by_pair"] = px.imshow(
            grid, origin="lower", aspect="auto", color_continuous_scale="Viridis",
            labels={"x": "rotary pair (0 = highest frequency)", "y": "layer", "color": "mean |q_p|"},
            title="Mean q norm per rotary pair and layer (Barbero et al. Fig. 3)",
        )
        kinds = hp.merge(heads[["layer", "head", "kind"]], on=["layer", "head"])
        spectrum = kinds.groupby(["kind", "pair"], as_index=False).agg(
            top_key_share=("top_key_share", "mean"), wavelength=("wavelength", "median"))
        figs["spectrum_by_kind"] = px.line(
            spectrum, x="wavelength", y="top_key_share", color="kind", markers=True, log_x=True,
            labels={"wavelength": "wavelength (tokens, median over layers)", "top_key_share": "share of |score| on the top key"},
            title="Which frequencies each kind of head draws its score from",
        )
        fig = go.Figure()
        for _, r in heads[heads.kind == "positional"].head(8).iterrows():
            sel = hp[(hp.layer == r.layer) & (hp["head"] == r["head"])]
            fig.add_trace(go.Scatter(x=sel.wavelength, y=sel.top_key_share, mode="lines+markers",
                                     name=f"L{r.layer}H{r['head']} (positional)"))
        for _, r in heads[heads.kind == "content"].head(4).iterrows():
            sel = hp[(hp.layer == r.layer) & (hp["head"] == r["head"])]
            fig.add_trace(go.Scatter(x=sel.wavelength, y=sel.top_key_share, mode="lines", line={"dash": "dot"},
                                     name=f"L{r.layer}H{r['head']} (content)"))
        fig.update_layout(title="Per-head frequency spectra: share of the top-key score per pair",
                          xaxis={"type": "log", "title": "wavelength (tokens)"}, yaxis_title="share")
        figs["head_spectra"] = fig
        pl = pairs.copy()
        pl["layer_kind"] = [f"L{l} (span {s})" for l, s in zip(pl.layer, pl.span)]
        pl["within span"] = pl.position_free_in_span.map({True: "position-free", False: "turns"})
        first_of_kind = pl.drop_duplicates(["span", "rope_base"]).layer.tolist()
        pl = pl[pl.layer.isin(first_of_kind)]
        figs["wavelength_vs_span"] = px.scatter(
            pl, x="pair", y="wavelength", color="layer_kind", log_y=True, symbol="within span",
            title="Wavelength of each pair against the span its layer can see (position-free if it barely turns)",
        )
        eff = result.tables["band_effects"]
        figs["band_effects"] = px.bar(
            eff, x="condition", y="delta_loss", title="p-RoPE band interventions: change in next-token loss",
            labels={"delta_loss": "loss - baseline loss (nats/token)"},
        )
        return figs

    @classmethod
    def compare(cls, results):
        """q-norm band shares and the p-RoPE loss changes, side by side per model."""
        import plotly.express as px

        rows, effects = [], []
        for model, r in results.items():
            s = r.summary
            rows += [{"model": model, "band": "lowest quarter", "share of q norm": s["q_norm_share_lowest_quarter"]},
                     {"model": model, "band": "highest quarter", "share of q norm": s["q_norm_share_highest_quarter"]}]
            eff = r.tables["band_effects"]
            effects += [{"model": model, "condition": c, "loss change (nats/token)": d}
                        for c, d in zip(eff.condition, eff.delta_loss) if c != "none"]
        return {
            "rope_band_shares": px.bar(pd.DataFrame(rows), x="band", y="share of q norm", color="model", barmode="group",
                                       title="Share of q norm by frequency band (Barbero et al. 2025)"),
            "rope_band_effects": px.bar(pd.DataFrame(effects), x="condition", y="loss change (nats/token)", color="model",
                                        barmode="group", title="p-RoPE: change in next-token loss when a band stops rotating"),
        }
