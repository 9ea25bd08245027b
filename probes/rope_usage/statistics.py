"""The fold rope-usage adds to the natural-text pass: per-pair q/k energy and score shares and the
q ~ k alignment at each head's own offset (DoPE's Gram sums come from
``posbench.rope_theory.dope.gram_capture``).

Pair p is dims (p, p + P) of the rotated q/k (HF rotate-half layout; P rotary pairs, the rest of
the head, if any, is non-rotary and gets the extra slot P).
"""

from __future__ import annotations

import torch

from posbench.reduce import rotary_pairs
from posbench.sites import AttentionStatistic, Context


def _with_rest(per_pair: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    return torch.cat([per_pair, rest.unsqueeze(-1)], -1)


class RopeUsageStatistic(AttentionStatistic):
    """Per layer, summed over the real tokens of every sequence ([H, P(+1)] unless noted):

    * ``q_norm``, ``k_norm``: sum of the pair norms |q_p|, |k_p| (Barbero et al.'s spectrum);
    * ``q_energy``, ``k_energy``: sum of the squared norms |q_p|^2 (+ the non-rotary dims), which
      add up to the head's |q|^2, so shares of them are shares of the head's norm;
    * ``contrib``, ``contrib_abs``: the attention-weighted score terms q_i^(p) . (A k)_i^(p) * scaling
      (exact: they sum over pairs to the expected pre-softmax score), and their absolute values;
    * ``top_abs``: |score term| on each query's top-attended key;
    * q ~ k at the head's own offset d* (``offsets[layer, head]``), per band B of ``bands[layer]``
      (name -> pair indices): ``qk_dot[B]`` = sum_i q_i^B . k_{i-d*}^B, ``qk_bound[B]`` = sum_i
      |q_i^B| |k_{i-d*}^B| (Cauchy-Schwarz), ``qk_cos[B]`` = sum_i of their ratio, ``qk_cos_n[B]``,
      over queries whose key i - d* is a real token other than the first (the sink).
    """

    needs = ("rot_q", "rot_k")

    def __init__(self, offsets: torch.Tensor, bands: dict[int, dict[str, torch.Tensor]]):
        self.offsets, self.bands = offsets, bands

    def start(self, ctx: Context):
        H, P = ctx.facts.n_heads, ctx.facts.n_pairs
        state = {name: torch.zeros(H, P) for name in ("q_norm", "k_norm")}
        state.update({name: torch.zeros(H, P + 1) for name in ("q_energy", "k_energy", "contrib", "contrib_abs", "top_abs")})
        for band in self.bands[ctx.layer]:
            state.update({f"qk_{kind}[{band}]": torch.zeros(H) for kind in ("dot", "bound", "cos", "cos_n", "n")})
        state["tokens"] = 0
        return state

    def update(self, state, rows, start, ctx):
        facts = ctx.facts
        P, scaling, kv_of = facts.n_pairs, facts.scaling[ctx.layer], facts.kv_of
        d_star = self.offsets[ctx.layer].long()  # [H]
        for b, blk, first in ctx.sequence_rows(rows, start):
            cols = ctx.batch.real_columns(b)
            n, length = blk.shape[1], blk.shape[2]
            q = ctx.tensors["rot_q"][b, cols].transpose(0, 1)[:, first : first + n]  # [H, n, d]
            k = ctx.tensors["rot_k"][b, cols].transpose(0, 1)[kv_of]  # [H, L, d] (GQA: shared k)
            k_own = k[:, first : first + n]
            qp, kp = rotary_pairs(q, P), rotary_pairs(k_own, P)
            state["q_norm"] += qp.norm(dim=-1).sum(1).cpu()
            state["k_norm"] += kp.norm(dim=-1).sum(1).cpu()
            state["q_energy"] += _with_rest(qp.square().sum(-1), q[..., 2 * P :].square().sum(-1)).sum(1).cpu()
            state["k_energy"] += _with_rest(kp.square().sum(-1), k_own[..., 2 * P :].square().sum(-1)).sum(1).cpu()
            state["tokens"] += n
            seen = first + n  # causal rows: keys after the chunk's last query carry no attention
            prod = q * (blk[..., :seen] @ k[:, :seen]) * scaling  # attention-weighted keys
            contrib = _with_rest(rotary_pairs(prod, P).sum(-1), prod[..., 2 * P :].sum(-1))
            state["contrib"] += contrib.sum(1).cpu()
            state["contrib_abs"] += contrib.abs().sum(1).cpu()
            k_top = torch.gather(k, 1, blk[..., :seen].argmax(-1).unsqueeze(-1).expand(-1, -1, k.shape[-1]))
            prod = q * k_top * scaling
            state["top_abs"] += _with_rest(rotary_pairs(prod, P).sum(-1), prod[..., 2 * P :].sum(-1)).abs().sum(1).cpu()
            # q ~ k: query i against key i - d* of its own head
            keys = torch.arange(first, first + n)[None, :] - d_star[:, None]  # [H, n]
            valid = (keys >= 1) & (keys < length)
            k_at = torch.gather(k, 1, keys.clamp(0, length - 1).unsqueeze(-1).expand(-1, -1, k.shape[-1]).to(k.device))
            kq = rotary_pairs(k_at, P)
            dot, q_sq, k_sq = (qp * kq).sum(-1), qp.square().sum(-1), kq.square().sum(-1)  # [H, n, P]
            valid = valid.to(dot.device)
            for band, idx in self.bands[ctx.layer].items():
                d_b = dot[..., idx].sum(-1)
                bound = (q_sq[..., idx].sum(-1) * k_sq[..., idx].sum(-1)).sqrt()
                has = valid & (bound > 0)
                state[f"qk_dot[{band}]"] += (d_b * valid).sum(-1).cpu()
                state[f"qk_bound[{band}]"] += (bound * valid).sum(-1).cpu()
                state[f"qk_cos[{band}]"] += torch.where(has, d_b / bound.clamp(min=1e-30), 0.0).sum(-1).cpu()
                state[f"qk_cos_n[{band}]"] += has.sum(-1).cpu()
                state[f"qk_n[{band}]"] += valid.sum(-1).cpu()
        return state


__all__ = ["RopeUsageStatistic"]
