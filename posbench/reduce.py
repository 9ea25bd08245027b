"""Reductions shared by probes. Each takes one row's real-token attention block (or q/k) and
returns small per-head statistics, so probes can reduce while hooks fire."""

from __future__ import annotations

import math

import torch


def renormalise_without_first(block: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop key 0 (the sink) and renormalise each row. block [H, L, L] -> (Ã [H, L, L], row_ok [H, L])."""
    rest = 1.0 - block[..., 0]
    out = block.clone()
    out[..., 0] = 0.0
    ok = rest > eps
    out = out / rest.clamp(min=eps).unsqueeze(-1)
    out = out * ok.unsqueeze(-1)
    return out, ok


def offset_sums(block: torch.Tensor, max_offset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over queries of Ã[i, i - d] for d = 0..D (key 0 excluded, rows renormalised).

    Returns (sums [H, D+1], counts [D+1]); counts[d] is the number of queries i with a key
    i - d >= 1, so sums / counts is the offset profile P_h(d) of the block.
    """
    heads, length, _ = block.shape
    top = length - 1 if max_offset is None else min(max_offset, length - 1)
    norm, ok = renormalise_without_first(block)
    sums = torch.zeros(heads, top + 1)
    counts = torch.zeros(top + 1)
    for d in range(top + 1):
        diag = torch.diagonal(norm, offset=-d, dim1=-2, dim2=-1)[:, 1:]  # keys j = i - d >= 1
        valid = torch.diagonal(ok.unsqueeze(-1).expand_as(norm), offset=-d, dim1=-2, dim2=-1)[:, 1:]
        sums[:, d] = (diag * valid).sum(-1).cpu()
        counts[d] = diag.shape[-1]
    return sums, counts


def row_jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between matching rows: [..., L] -> [...], in [0, 1]."""
    m = 0.5 * (p + q)
    kl_p = torch.special.xlogy(p, p) - torch.special.xlogy(p, m)
    kl_q = torch.special.xlogy(q, q) - torch.special.xlogy(q, m)
    return (0.5 * (kl_p + kl_q)).sum(-1).clamp(min=0) / math.log(2)


def offset_prediction(profile: torch.Tensor, length: int) -> torch.Tensor:
    """Rows predicted from an offset profile: pred[h, i, j] ∝ P_h(i - j) for 1 <= j <= i."""
    heads, width = profile.shape
    idx = torch.arange(length)
    delta = idx[:, None] - idx[None, :]
    allowed = (delta >= 0) & (idx[None, :] >= 1)
    delta = delta.clamp(min=0, max=width - 1)
    pred = profile[:, delta] * allowed
    pred = pred / pred.sum(-1, keepdim=True).clamp(min=1e-12)
    return pred


def position_dependence(block: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """PDS per head on one block: 1 - mean over queries i >= 2 of TV(Ã_i, predicted_i).

    Ã is the row with the first token removed and renormalised; predicted_i is the row the
    head's offset profile alone would give. 1 = attention is fully determined by relative
    offset; 0 = offset explains none of it. [H, L, L] -> [H].
    """
    length = block.shape[-1]
    if length < 3:
        return torch.full((block.shape[0],), float("nan"))
    norm, ok = renormalise_without_first(block)
    pred = offset_prediction(profile.to(block.device), length)
    tv = 0.5 * (norm - pred).abs().sum(-1)  # [H, L]
    rows = ok[:, 2:]
    return 1.0 - (tv[:, 2:] * rows).sum(-1).cpu() / rows.sum(-1).clamp(min=1).cpu()


def rotary_pairs(x: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Split the rotary part of q/k into HF rotate-half pairs: [..., d] -> [..., n_pairs, 2].

    Pair k is dims (k, k + n_pairs), not (2k, 2k + 1): HuggingFace's rotate_half layout.
    """
    return torch.stack([x[..., :n_pairs], x[..., n_pairs : 2 * n_pairs]], dim=-1)


def pair_scores(q: torch.Tensor, k: torch.Tensor, n_pairs: int, scaling: float) -> torch.Tensor:
    """Exact per-pair terms of the pre-softmax score: q [.., Lq, d], k [.., Lk, d] ->
    [.., Lq, Lk, n_pairs + 1]; the last slot holds the non-rotary dims (partial rotary).
    Summed over the last axis they equal scaling * q·k."""
    qp, kp = rotary_pairs(q, n_pairs), rotary_pairs(k, n_pairs)
    per_pair = torch.einsum("...ipc,...jpc->...ijp", qp, kp) * scaling
    rest = torch.einsum("...id,...jd->...ij", q[..., 2 * n_pairs :], k[..., 2 * n_pairs :]) * scaling
    return torch.cat([per_pair, rest.unsqueeze(-1)], dim=-1)


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token next-token negative log-likelihood, 0 where there is no real target. [B, T-1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(nll.dtype)
    return nll * valid
