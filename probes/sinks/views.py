"""How a sinks result is shown: first-token mass per head, sink rate per layer, mass per key
position, the first-token-or-position-0 test and massive activations."""

from __future__ import annotations

import numpy as np

from posbench.protocols import ProbeResult
from posbench.views import ProbeView


class SinksView(ProbeView):
    probe = "sinks"

    @classmethod
    def reading_tables(cls, result: ProbeResult):
        if "heads" not in result.tables:
            return {}
        heads = result.tables["heads"]
        per_layer = heads.groupby("layer").agg(sink_heads=("sink", "sum"), heads=("head", "size")).reset_index()
        return {"sink heads per layer (taxonomy trait: alpha_0 > epsilon on natural text and random tokens)": per_layer}

    @classmethod
    def figures(cls, result: ProbeResult):
        import plotly.express as px
        import plotly.graph_objects as go

        figs = {}
        hm = result.tables["head_mass"]
        kind = "natural" if "natural" in set(hm["input"]) else hm["input"].iloc[0]
        k0 = hm[(hm.key_pos == 0) & (hm["input"] == kind)]
        grid = k0.pivot(index="layer", columns="head", values="mean_mass")
        figs["first_token_mass"] = px.imshow(
            grid, origin="lower", aspect="auto", zmin=0, zmax=1, color_continuous_scale="Viridis",
            labels={"x": "head", "y": "layer", "color": "mass"},
            title=f"Attention mass on the first token per head ({kind} text, alpha_0)",
        ).update_xaxes(dtick=1)
        ls = result.tables["layer_sink_rate"]
        ls0 = ls[ls.key_pos == 0]
        figs["sink_rate_by_layer"] = px.line(
            ls0, x="layer", y="sink_rate", color="input", markers=True, range_y=[0, 1.02],
            title=f"Sink rate per layer: share of heads x sequences with alpha_0 > {result.config['epsilon']}",
        )
        kp = ls[ls["input"] == kind]
        figs["mass_by_key_position"] = px.line(
            kp, x="layer", y="mean_mass", color=kp.key_pos.astype(str), markers=True,
            labels={"color": "key position"}, title=f"Mean mass on each of the first key positions ({kind})",
        )
        if "first_token" in result.tables:
            ft = result.tables["first_token"]
            by = ft.groupby(["variant", "layer"], as_index=False)[["mass_pos0", "mass_first_token"]].mean()
            fig = go.Figure()
            for variant, g in by.groupby("variant", sort=False):
                fig.add_trace(go.Scatter(x=g.layer, y=g.mass_pos0, mode="lines+markers", name=f"{variant}: position 0"))
                if g.mass_first_token.notna().any() and variant not in ("as_is",):
                    fig.add_trace(go.Scatter(x=g.layer, y=g.mass_first_token, mode="lines+markers",
                                             line={"dash": "dash"}, name=f"{variant}: original first token"))
            fig.update_layout(title="Does the sink follow the first token or position 0?",
                              xaxis_title="layer", yaxis_title="mean mass (all heads)", yaxis_range=[0, 1.02])
            figs["first_token_or_position"] = fig
        rp = result.tables["resid_position"]
        rpk = rp[rp["input"] == kind]
        if len(rpk):
            g = rpk.pivot(index="layer", columns="position", values="ratio_to_median")
            figs["massive_activations"] = px.imshow(
                np.log10(g.clip(lower=1e-3)), origin="lower", aspect="auto", color_continuous_scale="Magma",
                labels={"x": "position", "y": "layer", "color": "log10 max|x| / median"},
                title=f"Residual-stream max |x| per position vs the layer median ({kind})",
            )
        return figs
