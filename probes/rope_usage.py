"""RoPE frequency usage: which rotary frequencies each head uses, and for what.

Per layer x query head x rotary pair (HF rotate-half layout: pair p = dims p and p + r/2, r the
rotary dims; frequencies from the layer's own ``inv_freq``):

* mean norm of q and k in each pair (Barbero et al., "Round and Round We Go! What makes Rotary
  Positional Encodings useful?", ICLR 2025): |q_p . k_p| <= |q_p||k_p|, so the norm bounds what a
  pair can contribute; rotation keeps it, so it is read after RoPE;
* each pair's exact share of the pre-softmax score: s_ij = sum_p s_ij^(p) (+ non-rotary dims),
  taken (a) as the attention-weighted contribution sum_j A_ij s_ij^(p) = q_i^(p) . (A k)_i^(p),
  which sums over pairs to the expected score, and (b) on each query's top-attended key;
* which bands positional heads (previous-token / self) use against sink and content heads, with
  each pair's frequency in rad/token, its wavelength in tokens, and the rotation it makes across
  the span its layer can see (Gemma 3's sliding layers see 512 tokens);
* band interventions: next-token loss and positional-head scores when the lowest / highest
  fraction of frequencies is made position-free (p-RoPE).

Reduced in the hooks: per layer only [heads, pairs] sums are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from posbench import data as pdata
from posbench.errors import BadOptionError, PosbenchError
from posbench.interventions.rope_bands import RopePositionFree
from posbench.protocols import Probe, ProbeResult
from posbench.reduce import chunked_nll, rotary_pairs, self_and_previous


@dataclass
class RopeUsageConfig:
    seq_len: int = 128
    n_sequences: int = 8
    batch_size: int = 4
    high_freq_wavelength: float = 32.0  # pairs with a shorter wavelength (tokens) count as "high frequency"
    sink_threshold: float = 0.3
    positional_threshold: float = 0.5  # P(0) or P(1) above this: positional (self / previous-token) head
    position_free_rotation: float = math.pi / 8  # a pair turning less than this across its span is position-free there
    band_fractions: tuple[float, ...] = (0.25,)  # p-RoPE interventions evaluated (lowest and highest band)
    padding_side: str = "right"
    seed: int = 0


class RopeUsageProbe(Probe):
    name = "rope-usage"
    summary = "rotary frequency usage per head (q/k norms, exact per-pair score shares) and p-RoPE band effects"
    Config = RopeUsageConfig

    @classmethod
    def not_applicable(cls, model):
        if model.card.position_encoding != "rope":
            return f"{model.model_id} uses {model.card.position_encoding} positions, not RoPE"
        return None

    def check_config(self) -> None:
        c = self.config
        if c.seq_len < 4 or c.n_sequences < 1 or c.batch_size < 1:
            raise BadOptionError("seq_len >= 4, n_sequences >= 1 and batch_size >= 1 are required")
        if isinstance(c.band_fractions, (int, float)):
            self.config.band_fractions = (float(c.band_fractions),)
        if any(not 0 < float(f) <= 1 for f in self.config.band_fractions):
            raise BadOptionError("band_fractions must lie in (0, 1]")

    # ------------------------------------------------------------------ one pass
    def _pass(self, model, seqs, bar, full_stats: bool):
        """Loss, P(0)/P(1)/first-token mass per head, and (full_stats) the per-pair sums."""
        c = self.config
        L, H, P = model.n_layers, model.n_heads, (model.card.rotary_dims or model.d_head) // 2
        kv_of = torch.tensor([model.card.kv_head_of(h) for h in range(H)])
        acc = {
            "q_norm": torch.zeros(L, H, P), "k_norm": torch.zeros(L, H, P),
            "contrib": torch.zeros(L, H, P + 1), "contrib_abs": torch.zeros(L, H, P + 1),
            "top_abs": torch.zeros(L, H, P + 1), "p0": torch.zeros(L, H), "p1": torch.zeros(L, H),
            "first": torch.zeros(L, H), "rows": 0, "tokens": torch.zeros(L),
        }
        nll_sum, nll_n = 0.0, 0
        scaling = [model.attention_scaling(layer) for layer in range(L)]
        for start in range(0, len(seqs), c.batch_size):
            chunk = seqs[start : start + c.batch_size]
            batch = model.batch(chunk, c.padding_side)
            stash: dict[str, torch.Tensor] = {}

            def reduce(layer):
                def hook(pattern, hook):
                    pat = pattern.detach().float()
                    for b in range(batch.size):
                        cols = batch.real_columns(b)
                        blk = pat[b, :, cols, cols]  # [H, Lb, Lb]
                        p0, p1 = self_and_previous(blk)
                        acc["p0"][layer] += p0
                        acc["p1"][layer] += p1
                        acc["first"][layer] += blk[:, 1:, 0].mean(-1).cpu()
                        if layer == 0:
                            acc["rows"] += 1
                        if not full_stats:
                            continue
                        q = stash["q"][b, cols].transpose(0, 1)  # [H, Lb, d]
                        k = stash["k"][b, cols].transpose(0, 1)[kv_of]  # [H, Lb, d] (GQA: shared k)
                        qp, kp = rotary_pairs(q, P), rotary_pairs(k, P)
                        acc["q_norm"][layer] += qp.norm(dim=-1).sum(1).cpu()
                        acc["k_norm"][layer] += kp.norm(dim=-1).sum(1).cpu()
                        acc["tokens"][layer] += q.shape[1]
                        kbar = blk @ k  # attention-weighted keys [H, Lb, d]
                        prod = q * kbar * scaling[layer]
                        contrib = torch.cat([rotary_pairs(prod, P).sum(-1), prod[..., 2 * P :].sum(-1, keepdim=True)], -1)
                        acc["contrib"][layer] += contrib.sum(1).cpu()
                        acc["contrib_abs"][layer] += contrib.abs().sum(1).cpu()
                        top = blk.argmax(-1)  # [H, Lb]
                        k_top = torch.gather(k, 1, top.unsqueeze(-1).expand_as(k))
                        prod = q * k_top * scaling[layer]
                        top_terms = torch.cat([rotary_pairs(prod, P).sum(-1), prod[..., 2 * P :].sum(-1, keepdim=True)], -1)
                        acc["top_abs"][layer] += top_terms.abs().sum(1).cpu()
                    return pattern

                return hook

            def loss(hidden, hook):
                nonlocal nll_sum, nll_n
                total, count = chunked_nll(model, hidden.detach(), batch)
                nll_sum, nll_n = nll_sum + total, nll_n + count
                return hidden

            hooks = []
            for layer in range(L):
                if full_stats:
                    hooks.extend(model.rotated_qk_hooks(layer, stash.__setitem__))
                hooks.append((model.hook_name("pattern", layer), reduce(layer)))
            hooks.append(("unembed.hook_in", loss))
            model.forward(batch, hooks, logits=False)
            bar.update(len(chunk))
        rows = max(acc["rows"], 1)
        for key in ("p0", "p1", "first"):
            acc[key] = acc[key] / rows
        acc["loss"] = nll_sum / max(nll_n, 1)
        return acc

    # ------------------------------------------------------------------ measure
    def measure(self, model, data, progress=False):
        c = self.config
        if model.card.position_encoding != "rope":
            raise PosbenchError(
                f"rope-usage needs a RoPE model; {model.model_id} uses {model.card.position_encoding} "
                "positions (try smollm2-135m-instruct or gemma-3-270m)"
            )
        texts = pdata.natural_texts()[: c.n_sequences] if data is None else ([data] if isinstance(data, str) else list(data))
        seqs = pdata.natural_sequences(model, texts, c.seq_len)
        model.check_lengths(seqs)
        bands = [(f, False) for f in c.band_fractions] + [(f, True) for f in c.band_fractions]
        bar = tqdm(total=len(seqs) * (1 + len(bands)), desc=f"rope usage on {model.model_id}", unit="seq",
                   disable=not progress)
        base = self._pass(model, seqs, bar, full_stats=True)
        L, H = model.n_layers, model.n_heads
        P = (model.card.rotary_dims or model.d_head) // 2

        # --- per-pair frequency facts, per layer
        pair_rows = []
        freqs = {layer: model.rotary_inv_freq(layer) for layer in range(L)}
        longest = max(len(s) for s in seqs)
        for layer in range(L):
            window = model.card.sliding_windows[layer]
            span = window if window else (model.card.context_length or longest)
            for p in range(P):
                theta = float(freqs[layer][p])
                pair_rows.append({
                    "layer": layer, "pair": p, "dims": f"{p},{p + P}", "inv_freq": theta,
                    "wavelength": (2 * math.pi / theta) if theta > 0 else math.inf,
                    "span": span, "rotation_over_span": theta * span,
                    "position_free_in_span": theta * span < c.position_free_rotation,
                    "rope_base": model.card.rope_bases[layer],
                })
        pairs = pd.DataFrame(pair_rows)

        # --- head kinds from the same pass
        kinds = np.where(base["first"] > c.sink_threshold, "sink",
                         np.where(torch.maximum(base["p0"], base["p1"]) >= c.positional_threshold, "positional", "content"))
        tok = base["tokens"].clamp(min=1)[:, None, None]
        q_norm, k_norm = base["q_norm"] / tok, base["k_norm"] / tok
        contrib, contrib_abs, top_abs = base["contrib"] / tok, base["contrib_abs"] / tok, base["top_abs"] / tok
        abs_share = contrib_abs / contrib_abs.sum(-1, keepdim=True).clamp(min=1e-12)
        top_share = top_abs / top_abs.sum(-1, keepdim=True).clamp(min=1e-12)
        q_share = q_norm / q_norm.sum(-1, keepdim=True).clamp(min=1e-12)

        head_pair_rows, head_rows = [], []
        for layer in range(L):
            wl = torch.tensor(pairs[pairs.layer == layer].wavelength.to_numpy(), dtype=torch.float32)
            high = wl < c.high_freq_wavelength
            order = torch.argsort(freqs[layer])  # ascending frequency
            quarter = max(1, P // 4)
            low_q, high_q = order[:quarter], order[-quarter:]
            for head in range(H):
                for p in range(P):
                    head_pair_rows.append((layer, head, model.card.kv_head_of(head), p, float(freqs[layer][p]),
                                           float(wl[p]), float(q_norm[layer, head, p]), float(k_norm[layer, head, p]),
                                           float(contrib[layer, head, p]), float(abs_share[layer, head, p]),
                                           float(top_share[layer, head, p])))
                head_rows.append({
                    "layer": layer, "head": head, "kv_head": model.card.kv_head_of(head), "kind": str(kinds[layer, head]),
                    "self_score": float(base["p0"][layer, head]), "prev_token_score": float(base["p1"][layer, head]),
                    "first_token_mass": float(base["first"][layer, head]),
                    "q_norm_share_low_quarter": float(q_share[layer, head, low_q].sum()),
                    "q_norm_share_high_quarter": float(q_share[layer, head, high_q].sum()),
                    "top_key_share_high_freq": float(top_share[layer, head, :P][high].sum()),
                    "score_share_high_freq": float(abs_share[layer, head, :P][high].sum()),
                    "score_share_non_rotary": float(abs_share[layer, head, P]),
                    "expected_score": float(contrib[layer, head].sum()),
                    "dominant_pair": int(top_share[layer, head, :P].argmax()),
                })
        head_pairs = pd.DataFrame(head_pair_rows, columns=[
            "layer", "head", "kv_head", "pair", "inv_freq", "wavelength", "q_norm", "k_norm",
            "score_contribution", "score_share", "top_key_share"])
        heads = pd.DataFrame(head_rows)

        # --- band interventions: loss and positional-head scores
        positional = heads[heads.kind == "positional"]
        effect_rows = [self._effect_row("none", base, base, positional)]
        for fraction, highest in bands:
            iv = RopePositionFree(fraction=fraction, highest=highest)
            with model.intervene(iv):
                res = self._pass(model, seqs, bar, full_stats=False)
            label = f"position-free {'highest' if highest else 'lowest'} {fraction:g}"
            effect_rows.append(self._effect_row(label, res, base, positional, iv.describe()))
        bar.close()
        effects = pd.DataFrame(effect_rows)

        summary = self._summary(model, heads, pairs, effects)
        tables = {"heads": heads, "head_pairs": head_pairs, "pairs": pairs, "band_effects": effects}
        return tables, summary, {"tokens": seqs, "seq_len": c.seq_len, "bos_prepended": model.card.adds_bos}

    @staticmethod
    def _effect_row(label, res, base, positional, intervention=None):
        idx = [(int(r.layer), int(r["head"])) for _, r in positional.iterrows()]
        score = lambda acc: float(np.mean([max(acc["p0"][l, h], acc["p1"][l, h]) for l, h in idx])) if idx else float("nan")  # noqa: E731
        return {"condition": label, "loss": res["loss"], "delta_loss": res["loss"] - base["loss"],
                "positional_head_score": score(res), "delta_positional_score": score(res) - score(base),
                "intervention": "" if intervention is None else str(intervention)}

    def _summary(self, model, heads, pairs, effects) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {}
        out["q_norm_share_lowest_quarter"] = round(float(heads.q_norm_share_low_quarter.mean()), 4)
        out["q_norm_share_highest_quarter"] = round(float(heads.q_norm_share_high_quarter.mean()), 4)
        for kind in ("positional", "sink", "content"):
            sel = heads[heads.kind == kind]
            out[f"heads_{kind}"] = int(len(sel))
            if len(sel):
                out[f"{kind}_heads_top_key_share_high_freq"] = round(float(sel.top_key_share_high_freq.mean()), 4)
        pos = heads[heads.kind == "positional"]
        if len(pos):
            out["positional_heads"] = ", ".join(f"L{r.layer}H{r['head']}" for _, r in pos.iterrows())
        for kind in sorted(set(model.card.layer_types)):
            layers = [i for i, t in enumerate(model.card.layer_types) if t == kind]
            sel = pairs[pairs.layer.isin(layers)]
            per_layer = sel.groupby("layer").position_free_in_span.sum()
            out[f"position_free_pairs_{kind}"] = (
                f"{int(per_layer.iloc[0])} of {int((pairs.layer == layers[0]).sum())} pairs "
                f"(span {int(sel.span.iloc[0])} tokens, base {sel.rope_base.iloc[0]:g})"
            )
        for _, row in effects.iterrows():
            out[f"loss[{row.condition}]"] = round(float(row.loss), 4)
        return out

    @classmethod
    def report_tables(cls, result: ProbeResult):
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

    # ------------------------------------------------------------------ figures
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
        first_of_kind = pl.drop_duplicates(["span", "rope_base"]).layer.tolist()
        pl = pl[pl.layer.isin(first_of_kind)]
        figs["wavelength_vs_span"] = px.scatter(
            pl, x="pair", y="wavelength", color="layer_kind", log_y=True, symbol="position_free_in_span",
            title="Wavelength of each pair against the span its layer can see (position-free if it barely turns)",
        )
        eff = result.tables["band_effects"]
        figs["band_effects"] = px.bar(
            eff, x="condition", y="delta_loss", title="p-RoPE band interventions: change in next-token loss",
            labels={"delta_loss": "loss - baseline loss (nats/token)"},
        )
        return figs
