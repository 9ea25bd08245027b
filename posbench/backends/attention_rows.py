"""Attention pattern rows computed from q and k, one chunk of queries at a time.

The attention statistics a probe declares (``AttentionCapture``) are folds over chunks of query
rows of a layer's pattern. On the fast path the model's forward runs SDPA, which never shows the
pattern; these functions rebuild the same rows from the post-RoPE queries and keys the attention
function receives, with the model's own scaling, logit softcap, GQA grouping and mask (causal,
sliding window, padding, an explicit key mask), holding at most ``[B, H, chunk, T]`` at once.
Only the band of keys a chunk can see is multiplied (keys before the chunk's end on a causal
layer, and no further back than the sliding window), the rest of each row is exactly zero.

Nothing here knows a hooking library: any backend that can hand over q, k and the mask uses it.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch

from ..sites import AttentionCapture, Context

ROW_CHUNK = 256  # query rows at once: temporaries stay [B, H, 256, T], never [B, H, T, T]


def allowed_keys(mask: torch.Tensor | None, start: int, end: int, width: int, device) -> torch.Tensor:
    """Which keys queries ``start .. end-1`` may see: bool [B|1, 1, n, width].

    ``mask`` is what HuggingFace hands an attention function: None (plain causal, no padding,
    no effective sliding window), a boolean mask [B, 1, T, T] (True = attend), or an additive
    float mask (0 = attend, a very negative number = blocked).
    """
    if mask is None:
        queries = torch.arange(start, end, device=device)[:, None]
        return (torch.arange(width, device=device)[None, :] <= queries)[None, None]
    rows = mask[..., start:end, :width]
    if rows.dtype == torch.bool:
        return rows
    return rows > torch.finfo(rows.dtype).min / 2


def with_key_mask(mask: torch.Tensor | None, key_mask: torch.Tensor) -> torch.Tensor:
    """An HF attention mask with a batch's explicit key mask [B, T, T] (True = may attend) on top."""
    keys = key_mask.bool()[:, None]
    if mask is None:
        width = keys.shape[-1]
        return keys & torch.ones(width, width, dtype=torch.bool, device=keys.device).tril()
    if mask.dtype == torch.bool:
        return mask & keys
    return mask.masked_fill(~keys, torch.finfo(mask.dtype).min)


def key_band(start: int, end: int, width: int, causal: bool, sliding_window: int | None) -> tuple[int, int]:
    """The keys ``[lo, hi)`` queries ``start .. end-1`` can reach at all: keys after the last query
    are invisible on a causal layer, and keys ``sliding_window`` or more behind the first query
    are outside a sliding window (HF: key j visible from query i iff i - j < window)."""
    hi = end if causal else width
    lo = max(0, start - sliding_window + 1) if sliding_window else 0
    return lo, max(lo, hi)


def pattern_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    *,
    softcap: float | None = None,
    sliding_window: int | None = None,
    causal: bool = True,
    chunk: int = ROW_CHUNK,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, rows)``: rows [B, H, n, T] (float32) of the softmax attention pattern for
    queries ``start .. start+n-1``, as eager attention computes it.

    q [B, H, T, d] and k [B, Hkv, T, d] are the queries and keys *after* RoPE (exactly what the
    model's attention function receives); query head h reads key head h // (H / Hkv). Rows of
    queries that see no key at all (left padding) are zero.
    """
    batch, heads, width, d = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    grouped_q = q.reshape(batch, kv_heads, group, width, d)
    for start in range(0, width, chunk):
        end = min(width, start + chunk)
        n = end - start
        lo, hi = key_band(start, end, width, causal, sliding_window)
        # the queries of one key head side by side: one [group * n, d] x [d, keys] product per key
        # head; the scaling goes on the (small) queries rather than on the [n, keys] scores
        queries = grouped_q[:, :, :, start:end].reshape(batch, kv_heads, group * n, d) * scaling
        scores = torch.matmul(queries, k[:, :, lo:hi].transpose(-1, -2)).view(batch, heads, n, hi - lo).float()
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if mask is None:  # plain causal: only the chunk's own diagonal block has keys to hide
            if causal and end > lo:
                diagonal = scores[..., start - lo :]
                future = torch.ones(n, diagonal.shape[-1], dtype=torch.bool, device=q.device).triu(1)
                diagonal.masked_fill_(future, float("-inf"))
            seen = None
        else:
            allowed = allowed_keys(mask, start, end, width, q.device)[..., lo:hi]
            scores.masked_fill_(~allowed, float("-inf"))
            seen = allowed.any(-1, keepdim=True)
        rows = torch.empty(batch, heads, n, width, dtype=torch.float32, device=q.device)
        torch.softmax(scores, dim=-1, out=rows[..., lo:hi])
        rows[..., :lo] = 0.0
        rows[..., hi:] = 0.0
        if seen is not None and not bool(seen.all()):
            rows.masked_fill_(~seen.expand(batch, 1, n, 1), 0.0)
        yield start, rows


def fold_statistics(
    captures: Sequence[AttentionCapture], chunks: Iterable[tuple[int, torch.Tensor]], contexts: Sequence[Context]
) -> list[Any]:
    """Fold every capture's statistic over the same chunks of rows (each chunk is computed
    once, whatever the number of statistics): one result per capture."""
    states = [c.statistic.start(ctx) for c, ctx in zip(captures, contexts)]
    for start, rows in chunks:
        states = [c.statistic.update(s, rows, start, ctx) for c, s, ctx in zip(captures, states, contexts)]
    return [c.statistic.finish(s, ctx) for c, s, ctx in zip(captures, states, contexts)]


def slices(pattern: torch.Tensor, chunk: int = ROW_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, rows)`` slices of a full pattern [B, H, T, T] (the eager path), as float32."""
    for start in range(0, pattern.shape[2], chunk):
        yield start, pattern[:, :, start : start + chunk].float()
