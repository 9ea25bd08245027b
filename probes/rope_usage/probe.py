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

from posbench import data as pdata
from posbench.batching import run_batches
from posbench.errors import BadOptionError, PosbenchError
from posbench.interventions.rope_bands import RopePositionFree
from posbench.options import option
from posbench.progress import Progress
from posbench.protocols import Probe
from posbench.reduce import nll_capture, rotary_pairs, self_and_previous_sums
from posbench.sites import AttentionCapture, AttentionStatistic, Context


@dataclass
class RopeUsageConfig:
    seq_len: int = option(128, min=4, counts="tokens", help="tokens per sequence")
    n_sequences: int = option(8, min=1, counts="sequences")
    batch_size: int = option(4, min=1, counts="batch")
    high_freq_wavelength: float = option(32.0, min=0.0, help="pairs with a shorter wavelength (tokens) count as high frequency")
    sink_threshold: float = option(0.3, min=0.0, max=1.0)
    positional_threshold: float = option(0.5, min=0.0, max=1.0, help="P(0) or P(1) above this: positional (self / previous-token) head")
    position_free_rotation: float = option(math.pi / 8, min=0.0, help="a pair turning less than this (rad) across its span is position-free there")
    band_fractions: tuple[float, ...] = option((0.25,), min=0.0, max=1.0, help="p-RoPE bands evaluated (lowest and highest fraction)")
    padding_side: str = option("right", choices=("left", "right"))
    seed: int = option(0, min=0)


class RopeUsageStatistic(AttentionStatistic):
    """Per layer, summed over sequences: P(0), P(1) and first-token mass per head, and (with
    ``pairs``) per rotary pair the q/k norms, the attention-weighted score contribution
    q_i^(p) . (A k)_i^(p), its absolute value, and the absolute contribution on the top key."""

    needs = ("rot_q", "rot_k")

    def __init__(self, pairs: bool = True):
        self.pairs = pairs
        if not pairs:
            self.needs = ()

    def start(self, ctx: Context):
        H = ctx.facts.n_heads
        P = ctx.facts.n_pairs
        zeros = lambda *shape: torch.zeros(*shape)  # noqa: E731
        state = {"p0": zeros(H), "p1": zeros(H), "first": zeros(H), "rows": 0, "tokens": 0,
                 "per_seq": {}}
        if self.pairs:
            state.update(q_norm=zeros(H, P), k_norm=zeros(H, P), contrib=zeros(H, P + 1),
                         contrib_abs=zeros(H, P + 1), top_abs=zeros(H, P + 1))
        return state

    def update(self, state, rows, start, ctx):
        facts = ctx.facts
        P, scaling, kv_of = facts.n_pairs, facts.scaling[ctx.layer], facts.kv_of
        for b, blk, first in ctx.sequence_rows(rows, start):
            seq = state["per_seq"].setdefault(b, {"s0": 0.0, "s1": 0.0, "first": 0.0})
            s0, s1 = self_and_previous_sums(blk, first)
            seq["s0"], seq["s1"] = seq["s0"] + s0, seq["s1"] + s1
            seq["first"] = seq["first"] + blk[:, max(0, 1 - first) :, 0].sum(-1)
            if not self.pairs:
                continue
            cols = ctx.batch.real_columns(b)
            n = blk.shape[1]
            q = ctx.tensors["rot_q"][b, cols].transpose(0, 1)[:, first : first + n]  # [H, n, d]
            k = ctx.tensors["rot_k"][b, cols].transpose(0, 1)[kv_of]  # [H, Lb, d] (GQA: shared k)
            qp, kp = rotary_pairs(q, P), rotary_pairs(k[:, first : first + n], P)
            state["q_norm"] += qp.norm(dim=-1).sum(1).cpu()
            state["k_norm"] += kp.norm(dim=-1).sum(1).cpu()
            state["tokens"] += n
            kbar = blk @ k  # attention-weighted keys [H, n, d]
            prod = q * kbar * scaling
            contrib = torch.cat([rotary_pairs(prod, P).sum(-1), prod[..., 2 * P :].sum(-1, keepdim=True)], -1)
            state["contrib"] += contrib.sum(1).cpu()
            state["contrib_abs"] += contrib.abs().sum(1).cpu()
            top = blk.argmax(-1)  # [H, n]
            k_top = torch.gather(k, 1, top.unsqueeze(-1).expand(-1, -1, k.shape[-1]))
            prod = q * k_top * scaling
            top_terms = torch.cat([rotary_pairs(prod, P).sum(-1), prod[..., 2 * P :].sum(-1, keepdim=True)], -1)
            state["top_abs"] += top_terms.abs().sum(1).cpu()
        return state

    def finish(self, state, ctx):
        for b, seq in state.pop("per_seq").items():
            length = int(ctx.batch.lengths[b])
            state["p0"] += (seq["s0"] / max(length - 1, 1)).cpu()
            state["p1"] += (seq["s1"] / (length - 2)).cpu() if length >= 3 else 0.0
            state["first"] += (seq["first"] / max(length - 1, 1)).cpu()
            state["rows"] += 1
        return state


class RopeUsageProbe(Probe):
    name = "rope-usage"
    summary = "rotary frequency usage per head (q/k norms, exact per-pair score shares) and p-RoPE band effects"
    Config = RopeUsageConfig
    default_data_options = ("n_sequences",)

    @classmethod
    def not_applicable(cls, model):
        if model.card.position_encoding != "rope":
            return f"{model.model_id} uses {model.card.position_encoding} positions, not RoPE"
        return None

    def check_config(self) -> None:
        if any(not 0 < f <= 1 for f in self.config.band_fractions):
            raise BadOptionError("band_fractions must lie in (0, 1]")

    # ------------------------------------------------------------------ one pass
    def _pass(self, model, seqs, bar, full_stats: bool):
        """Loss, P(0)/P(1)/first-token mass per head, and (full_stats) the per-pair sums."""
        c = self.config
        L = model.n_layers
        captures = [AttentionCapture("usage", RopeUsageStatistic(pairs=full_stats)), nll_capture("nll")]
        acc: dict[str, Any] = {}
        nll_sum, nll_n = 0.0, 0
        for _, _, out in run_batches(model, seqs, captures, batch_size=c.batch_size, padding_side=c.padding_side,
                                     progress=bar):
            for layer in range(L):
                for key, value in out["usage"][layer].items():
                    if key in ("rows", "tokens"):
                        acc.setdefault(key, [0] * L)[layer] += value
                    else:
                        acc.setdefault(key, torch.zeros(L, *value.shape))[layer] += value
            total, count = out["nll"]
            nll_sum, nll_n = nll_sum + total, nll_n + count
        rows = max(acc["rows"][0], 1)
        for key in ("p0", "p1", "first"):
            acc[key] = acc[key] / rows
        acc["tokens"] = torch.tensor(acc["tokens"], dtype=torch.float32)
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
        seqs = pdata.natural_sequences(model, texts, c.seq_len, warn=data is not None)
        model.check_lengths(seqs)
        bands = [(f, False) for f in c.band_fractions] + [(f, True) for f in c.band_fractions]
        bar = Progress(len(seqs) * (1 + len(bands)), f"rope usage on {model.model_id}", enabled=progress)
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
