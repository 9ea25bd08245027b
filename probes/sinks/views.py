"""How a sinks result is shown: first-token mass per head, sink rate per layer, mass per key
position, the first-token-or-position-0 test and massive activations."""

from __future__ import annotations

import numpy as np

from posbench.protocols import ProbeResult
from posbench.views import Finding, ProbeView, pct, verdict

_FOLLOWS = {"token": "the first token itself", "position 0": "position 0, whatever token sits there",
            "both": "both the first token and position 0", "no sink": "nothing (no sink when the first token moves)"}


class SinksView(ProbeView):
    probe = "sinks"
    labels = (
        (r"bos_prepended", "tokenizer adds BOS"),
        (r"epsilon", "sink threshold ε (attention mass)"),
        (r"sink_rate_(\w+)_pct", "sink rate, {0} input (% of heads × sequences with mass > ε on the first token)"),
        (r"mean_first_mass_(\w+)_layers2\+", "mean attention mass on the first token, {0} input, layers ≥ 2 (0-1)"),
        (r"share_heads_majority_first_(\w+)_layers2\+", "share of heads with most mass on the first token, {0} input, layers ≥ 2 (0-1)"),
        (r"max_activation_ratio", "largest residual activation / its layer's median (×)"),
        (r"max_activation", "largest residual activation (value, where)"),
        (r"massive_entries", "massive activations found (count)"),
        (r"massive_positions", "positions of the massive activations"),
        (r"massive_dims", "dimensions of the massive activations"),
        (r"first_token:first_moved:mass_on_moved_token", "first token moved behind 3 random tokens: mass on it, layers ≥ 2 (0-1)"),
        (r"first_token:(\w+):mass_pos0", "variant {0}: mass on position 0, layers ≥ 2 (0-1)"),
        (r"sink_follows", "the sink follows"),
    )

    @classmethod
    def finding(cls, result: ProbeResult) -> Finding:
        s, eps = result.summary, result.config.get("epsilon", 0.3)
        ls = result.tables["layer_sink_rate"]
        ls0 = ls[ls.key_pos == 0]
        kinds = [k for k in ("natural", "random", "repeated") if f"sink_rate_{k}_pct" in s]
        sentences = []
        if kinds:
            rates = " / ".join(f"{s[f'sink_rate_{k}_pct']:.1f}%" for k in kinds)
            sentences.append(f"Sink rate (heads × sequences with attention mass > {eps:g} on the first token) "
                             f"{rates} on {' / '.join(kinds)} input.")
        kind = "natural" if "natural" in kinds else (kinds[0] if kinds else None)
        if kind is not None:
            n_layers = int(ls0.layer.max()) + 1
            start = min(2, n_layers - 1)
            late = ls0[(ls0["input"] == kind) & (ls0.layer >= start)]
            sentences.append(f"From layer {start} on the sink rate is {pct(late.sink_rate.mean())} ({kind} text) and "
                             f"{pct(s.get(f'share_heads_majority_first_{kind}_layers2+', float('nan')))} of heads put "
                             "most of their attention on the first token.")
        follows = s.get("sink_follows")
        if follows:
            bos = "a BOS token is prepended" if s.get("bos_prepended") else "no BOS token is prepended"
            sentences.append(
                f"The sink follows {_FOLLOWS.get(follows, follows)} ({bos}): with the first token moved behind 3 random "
                f"tokens, position 0 keeps {s.get('first_token:first_moved:mass_pos0', float('nan')):.2f} of the mass and "
                f"the moved token gets {s.get('first_token:first_moved:mass_on_moved_token', float('nan')):.2f}.")
        if "max_activation_ratio" in s:
            sentences.append(f"Largest residual activation {s.get('max_activation', '')}, "
                             f"{s['max_activation_ratio']:,.0f}× its layer's median.")
        published = ("Gu et al. 2025: past the first layers most heads sink on the first token, on natural text and "
                     "random tokens alike (Llama-3-8B 99.0% / 91.2%), and models trained without BOS have no sink on "
                     "repeated tokens (0.00); Sun et al. 2024: massive activations (thousands × the median) sit on the "
                     "starting token in a few fixed dimensions.")
        checks = []
        if kind is not None:
            agree = s[f"sink_rate_{kind}_pct"] > 50
            checks.append(("most heads sink" if agree else "fewer than half the heads sink", agree))
        if "sink_rate_repeated_pct" in s and not s.get("bos_prepended"):
            none = s["sink_rate_repeated_pct"] < 10
            checks.append(("no sink on repeated tokens without BOS" if none else
                           f"a sink on repeated tokens without BOS ({s['sink_rate_repeated_pct']:.1f}%)", none))
        if "max_activation_ratio" in s:
            big = s["max_activation_ratio"] >= 100
            checks.append(("a massive activation is present" if big else "no massive activation (ratio < 100×)", big))
        return Finding(sentences, published, verdict(checks), ["Gu et al. 2025", "Sun et al. 2024"])

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

    @classmethod
    def compare(cls, results):
        """Sink rate per layer against relative depth (layer / last layer), one line per model."""
        import pandas as pd
        import plotly.express as px

        rows = []
        for model, r in results.items():
            ls = r.tables["layer_sink_rate"]
            ls = ls[(ls.key_pos == 0) & (ls["input"] == ("natural" if "natural" in set(ls["input"]) else ls["input"].iloc[0]))]
            last = max(int(ls.layer.max()), 1)
            rows.append(pd.DataFrame({"model": model, "relative depth": ls.layer / last, "layer": ls.layer,
                                      "sink rate": ls.sink_rate}))
        frame = pd.concat(rows, ignore_index=True)
        return {"sink_rate_by_depth": px.line(
            frame, x="relative depth", y="sink rate", color="model", markers=True, hover_data=["layer"], range_y=[0, 1.02],
            title="Sink rate per layer (natural text) against relative depth (0 = first layer, 1 = last)")}
