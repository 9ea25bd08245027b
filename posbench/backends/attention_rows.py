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

from typing import Any, Callable, Iterable, Iterator, Sequence

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
    heads: Sequence[int] | None = None,
    chunk: int = ROW_CHUNK,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, rows)``: rows [B, H, n, T] (float32) of the softmax attention pattern for
    queries ``start .. start+n-1``, as eager attention computes it.

    q [B, H, T, d] and k [B, Hkv, T, d] are the queries and keys *after* RoPE (exactly what the
    model's attention function receives); query head h reads key head h // (H / Hkv). With
    ``heads``, only those query heads are computed (rows [B, len(heads), n, T]). Rows of queries
    that see no key at all (left padding) are zero. ``rows`` is reused from chunk to chunk: valid
    until the next one is asked for (what ``AttentionStatistic.update`` promises).
    """
    if heads is not None:
        group = q.shape[1] // k.shape[1]
        q, k = q[:, list(heads)], k[:, [h // group for h in heads]]
    batch, heads, width, d = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    # the scaling goes on the (small) queries rather than on the [n, keys] scores of each chunk
    grouped_q = (q * scaling).reshape(batch, kv_heads, group, width, d)
    chunk = min(chunk, width)
    # Two buffers reused across chunks (fresh multi-MB tensors per chunk cost more in page faults
    # than the arithmetic): contiguous scores for the matmul and softmax, and the rows handed out.
    scratch = torch.empty(batch * heads * chunk * width, dtype=torch.float32, device=q.device)
    buffer = torch.zeros(batch, heads, chunk, width, dtype=torch.float32, device=q.device)
    zeroed_below = 0  # keys [0, zeroed_below) of the buffer are zero; keys >= the band's end stay zero
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    for start in range(0, width, chunk):
        end = min(width, start + chunk)
        n = end - start
        lo, hi = key_band(start, end, width, causal, sliding_window)
        # the queries of one key head side by side: one [group * n, d] x [d, keys] product per key head
        queries = grouped_q[:, :, :, start:end].reshape(batch, kv_heads, group * n, d)
        keys = k[:, :, lo:hi].transpose(-1, -2)
        if q.dtype == torch.float32:
            scores = scratch[: batch * heads * n * (hi - lo)].view(batch, kv_heads, group * n, hi - lo)
            torch.matmul(queries, keys, out=scores)
        else:
            scores = torch.matmul(queries, keys).float()
        scores = scores.view(batch, heads, n, hi - lo)
        if softcap is not None:
            scores.div_(softcap).tanh_().mul_(softcap)
        if mask is None:  # plain causal (HF's promise: no padding, no window in reach): only the
            # chunk's own diagonal block has keys to hide
            if causal:
                scores[..., start - lo :].masked_fill_(future[:n, :n], float("-inf"))
            seen = None
        else:
            allowed = allowed_keys(mask, start, end, width, q.device)[..., lo:hi]
            scores.masked_fill_(~allowed, float("-inf"))
            seen = allowed.any(-1, keepdim=True)
        torch.softmax(scores, dim=-1, out=scores)
        rows = buffer[:, :, :n]
        rows[..., lo:hi] = scores
        rows[..., zeroed_below:lo] = 0.0  # keys that slid out of the window since the last chunk
        zeroed_below = lo
        if seen is not None and not bool(seen.all()):
            rows.masked_fill_(~seen, 0.0)
        yield start, rows


def attention_from_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    *,
    softcap: float | None = None,
    sliding_window: int | None = None,
    causal: bool = True,
    chunk: int = ROW_CHUNK,
) -> tuple[Iterator[tuple[int, torch.Tensor]], torch.Tensor]:
    """Eager attention in chunks of query rows: ``(chunks, output)``. ``chunks`` yields what
    ``pattern_rows`` yields (every head) and, before handing a chunk over, writes its attention
    output ``rows @ v`` into ``output`` [B, T, H, d] (the layout HF attention functions return;
    complete once ``chunks`` is exhausted; queries that see no key get 0).

    Where a statistic needs every head's rows anyway, this replaces the SDPA call: the one
    Q.K^T and softmax serve both the output and the statistics (SDPA plus rebuilt rows would
    compute them twice). The output equals SDPA's up to float summation order.
    """
    batch, heads, width, d = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    output = torch.empty(batch, width, heads, v.shape[-1], dtype=v.dtype, device=v.device)
    values = v.float()

    def chunks() -> Iterator[tuple[int, torch.Tensor]]:
        for start, rows in pattern_rows(q, k, mask, scaling, softcap=softcap, sliding_window=sliding_window,
                                        causal=causal, chunk=chunk):
            n = rows.shape[2]
            lo, hi = key_band(start, start + n, width, causal, sliding_window)
            grouped = rows[..., lo:hi].reshape(batch, kv_heads, group * n, hi - lo)
            part = torch.matmul(grouped, values[:, :, lo:hi])  # [B, Hkv, group * n, d]
            output[:, start : start + n] = part.view(batch, heads, n, -1).transpose(1, 2)
            yield start, rows

    return chunks(), output


def entries_from_lse(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor,
                     scaling: float, causal: bool = True) -> torch.Tensor:
    """Single pattern entries A[b, h, queries[b, e], keys[b, e]] [B, H, E] from the post-RoPE q
    [B, H, T, d], k [B, Hkv, T, d] and each row's logsumexp ``lse`` [B, H, T] of the scaled
    scores: exp(scaling q . k - lse), O(E d) work; keys after their query are 0 (causal)."""
    group = q.shape[1] // k.shape[1]
    batch = torch.arange(q.shape[0], device=q.device)[:, None]
    q_e = q[batch, :, queries]  # [B, E, H, d]
    k_e = k[batch, :, keys].repeat_interleave(group, dim=2)
    logits = (q_e.float() * k_e.float()).sum(-1) * scaling - lse.float()[batch, :, queries]
    values = logits.exp_()
    if causal:
        values.masked_fill_((keys > queries)[..., None], 0.0)
    return values.transpose(1, 2)


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention without a mask on the CPU flash kernel, which also returns each row's
    logsumexp: (output [B, T, H, d] as HF attention functions return it, lse [B, H, T])."""
    group = query.shape[1] // key.shape[1]
    if group > 1:
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, True,
                                                                             scale=scaling)
    return output.transpose(1, 2).contiguous(), lse


def lse_possible(query: torch.Tensor, mask: torch.Tensor | None, softcap: float | None, causal: bool) -> bool:
    """Whether ``attention_with_lse`` computes this call: CPU, float32, plain causal, no softcap."""
    return (query.device.type == "cpu" and query.dtype == torch.float32 and mask is None
            and softcap is None and causal)


def fold_statistics(
    captures: Sequence[AttentionCapture],
    contexts: Sequence[Context],
    chunks_for: Callable[[tuple[int, ...] | None], Iterable[tuple[int, torch.Tensor]]],
    weighted: dict[int, torch.Tensor] | None = None,
    entry_values: dict[int, torch.Tensor] | None = None,
    declared: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[Any]:
    """Fold every capture's statistic, one result per capture. ``chunks_for(heads)`` yields the
    row chunks of the given query heads (None: all): captures asking for the same heads share
    each chunk, computed once. ``weighted[i]`` holds ``rows @ W`` [B, H, T, K] for capture i if
    its statistic declared key weights W; ``entry_values[i]`` the values [B, H, E] of the entries
    it declared; both are handed over in one piece. Declared entries not given are gathered
    from the chunks; ``declared`` holds what each statistic's ``entries(ctx)`` returned where the
    caller already asked (captures missing from it declared none), else each is asked here."""
    weighted, entry_values = weighted or {}, entry_values or {}
    results: list[Any] = [None] * len(captures)
    groups: dict[tuple[int, ...] | None, list[int]] = {}
    gathered: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    for i, capture in enumerate(captures):
        stat, ctx = capture.statistic, contexts[i]
        if i in weighted or i in entry_values:
            whole = weighted[i] if i in weighted else entry_values[i]
            whole = whole if stat.heads is None else whole[:, list(stat.heads)]
            results[i] = stat.finish(stat.update(stat.start(ctx), whole, 0, ctx), ctx)
            continue
        groups.setdefault(None if stat.heads is None else tuple(stat.heads), []).append(i)
        entries = stat.entries(ctx) if declared is None else declared.get(i)
        if entries is not None:
            gathered[i] = (entries[0], entries[1], None)
    for heads, members in groups.items():
        stats = {i: captures[i].statistic for i in members}
        states = {i: stats[i].start(contexts[i]) for i in members if i not in gathered}
        for start, rows in chunks_for(heads):
            for i in members:
                if i in gathered:
                    gathered[i] = _gather_entries(rows, start, *gathered[i])
                else:
                    states[i] = stats[i].update(states[i], rows, start, contexts[i])
        for i in members:
            if i in gathered:
                queries, _, values = gathered[i]
                if values is None:  # no chunk came (no query rows)
                    values = torch.zeros(queries.shape[0], len(heads) if heads else contexts[i].facts.n_heads,
                                         queries.shape[1])
                states[i] = stats[i].update(stats[i].start(contexts[i]), values, 0, contexts[i])
            results[i] = stats[i].finish(states[i], contexts[i])
    return results


def _gather_entries(rows: torch.Tensor, start: int, queries: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copy the declared entries whose query is in this chunk of rows [B, H, n, T] into ``values``."""
    if values is None:
        values = rows.new_zeros(rows.shape[0], rows.shape[1], queries.shape[1])
    queries, keys = queries.to(rows.device), keys.to(rows.device)
    b, e = ((queries >= start) & (queries < start + rows.shape[2])).nonzero(as_tuple=True)
    if len(b):
        values[b, :, e] = rows[b, :, queries[b, e] - start, keys[b, e]]
    return queries, keys, values


def attention_with_key_sums(attention: Callable, query, key, value, weights: torch.Tensor):
    """One attention call that also returns ``pattern @ W`` for per-key weights W [B, T, K].

    q and k get K (rounded up to 8) zero dims, which leave every score unchanged, and the values
    get W in those dims, so the kernel's own softmax weighs them. ``attention(q, k, v)`` must
    pass the scaling explicitly (the head dim grows). Returns the output [B, T, H, d] the plain
    call gives and the sums [B, H, T, K] (float32, or float64 for a float64 model)."""
    batch, kv_heads, width, d = value.shape
    k_cols = weights.shape[-1]
    pad = -(-k_cols // 8) * 8

    def widen(x, extra=None):
        wide = torch.cat([x, x.new_zeros(*x.shape[:-1], pad)], dim=-1)
        if extra is not None:
            wide[..., d : d + k_cols] = extra
        return wide

    values = widen(value, weights.to(value.dtype)[:, None])
    output = attention(widen(query), widen(key), values)
    sums = output[..., d : d + k_cols].transpose(1, 2)
    return output[..., :d], sums.to(torch.promote_types(sums.dtype, torch.float32))


def slices(pattern: torch.Tensor, heads: Sequence[int] | None = None, chunk: int = ROW_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, rows)`` slices of a full pattern [B, H, T, T] (the eager path), as float32."""
    if heads is not None:
        pattern = pattern[:, list(heads)]
    for start in range(0, pattern.shape[2], chunk):
        yield start, pattern[:, :, start : start + chunk].float()
