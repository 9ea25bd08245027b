"""Reductions shared by probes. Each takes one row's real-token attention block (or q/k) and
returns small per-head statistics, so probes can reduce while hooks fire."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .sites import Capture


ROW_CHUNK = 256  # query rows reduced at a time: temporaries stay [heads, 256, L], never [heads, L, L]


def _row_chunks(length: int):
    for start in range(0, length, ROW_CHUNK):
        yield start, min(length, start + ROW_CHUNK)


class Workspace:
    """Named scratch tensors reused from chunk to chunk (and layer to layer). A fold that takes
    fresh multi-MB temporaries for every chunk of rows spends about as long in page faults as in
    arithmetic; with a workspace each temporary is allocated once, at its largest size. A view
    it hands out is valid until the same name is taken again."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buffer[:numel].view(shape)


def offset_aligned(rows: torch.Tensor, first: int, width: int | None = None,
                   eps: float = 1e-6, workspace: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ã (key 0 dropped, rows renormalised) of a chunk of causal rows, indexed by offset.

    rows [H, n, L] are queries ``first .. first+n-1`` over keys ``0 .. L-1``. Returns
    (R [H, n, D], row_ok [H, n]) with D = first + n (or ``width`` if smaller: offsets d < width
    only) and R[h, i, D-1-d] = Ã[h, first+i, first+i-d] for 0 <= d <= D-1 (0 where that key would
    be < 1). Offsets run backwards so that R is a strided view of one left-padded copy of the rows
    (the skew of Transformer-XL's relative shift): no index tensor, no gather, and only the keys
    within D of each query are read. With a ``workspace`` the copy lives in its "aligned" buffer.
    """
    heads, n, _ = rows.shape
    width = first + n if width is None else min(width, first + n)
    base = first - width + 1  # the key in column 0 of the copy (negative: left padding)
    rest = 1.0 - rows[..., 0]
    ok = rest > eps
    padded = (workspace or Workspace()).take("aligned", (heads, n, n - 1 + width), rows)
    pad = max(0, -base)
    padded[..., :pad] = 0.0
    torch.div(rows[..., base + pad : first + n], rest.clamp(min=eps).unsqueeze(-1), out=padded[..., pad:])
    if base <= 0:
        padded[..., -base] = 0.0  # key 0
    if not bool(ok.all()):
        padded.mul_(ok.unsqueeze(-1))
    return padded.as_strided((heads, n, width), (padded.stride(0), padded.stride(1) + 1, 1)), ok


def offset_sums_aligned(aligned: torch.Tensor, width: int) -> torch.Tensor:
    """Sums over the rows of ``offset_aligned``'s R of each offset d < width: [H, n, D] -> [H, min(width, D)]."""
    return aligned.sum(1).flip(-1)[:, :width]


def offset_sums_rows(rows: torch.Tensor, first: int, width: int) -> torch.Tensor:
    """Offset sums of a chunk of causal rows: rows [H, n, L] are queries first .. first+n-1 of a
    block of L keys; returns sums [H, width] of Ã[i, i - d] over those rows (key 0 excluded, rows
    renormalised without it)."""
    sums = torch.zeros(rows.shape[0], width, device=rows.device)
    part = offset_sums_aligned(offset_aligned(rows, first, width)[0], width)
    sums[:, : part.shape[1]] = part
    return sums


def offset_counts(length: int, width: int) -> torch.Tensor:
    """counts[d]: the number of queries i of an L-token block with a key i - d >= 1."""
    return (length - 1 - torch.arange(width)).clamp(min=0).float()


def offset_sums(block: torch.Tensor, max_offset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over queries of Ã[i, i - d] for d = 0..D (key 0 excluded, rows renormalised).

    Returns (sums [H, D+1], counts [D+1]); counts[d] is the number of queries i with a key
    i - d >= 1, so sums / counts is the offset profile P_h(d) of the block.
    """
    heads, length, _ = block.shape
    width = length if max_offset is None else min(max_offset, length - 1) + 1
    sums = torch.zeros(heads, width, device=block.device)
    for r0, r1 in _row_chunks(length):
        sums += offset_sums_rows(block[:, r0:r1], r0, width)
    return sums.cpu(), offset_counts(length, width)


def self_and_previous_sums(rows: torch.Tensor, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over a chunk of rows (queries first .. first+n-1, keys 0 .. L-1) of Ã[i, i] for
    i >= 1 and Ã[i, i - 1] for i >= 2 (key 0 dropped, rows renormalised): ([H], [H])."""
    heads, n, length = rows.shape
    queries = torch.arange(first, first + n, device=rows.device)
    rest = (1.0 - rows[:, :, 0]).clamp(min=1e-6)
    local = torch.arange(n, device=rows.device)
    diag0 = rows[:, local, queries] / rest
    s0 = diag0[:, queries >= 1].sum(-1)
    ok1 = queries >= 2
    diag1 = rows[:, local[ok1], queries[ok1] - 1] / rest[:, ok1]
    return s0, diag1.sum(-1)


def self_and_previous(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P_h(0) and P_h(1) of the offset profile without building it: [H, L, L] -> ([H], [H])."""
    length = block.shape[-1]
    s0, s1 = torch.zeros(block.shape[0], device=block.device), torch.zeros(block.shape[0], device=block.device)
    for r0, r1 in _row_chunks(length):
        a, b = self_and_previous_sums(block[:, r0:r1], r0)
        s0, s1 = s0 + a, s1 + b
    p0 = s0 / max(length - 1, 1)
    if length < 3:
        return p0.cpu(), torch.zeros_like(p0).cpu()
    return p0.cpu(), (s1 / (length - 2)).cpu()


def row_jsd(p: torch.Tensor, q: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between matching rows: [H, L, K] -> [H, L], in [0, 1].

    Summed per key, 0.5 p log2 p + 0.5 q log2 q - m log2 m with m = (p + q) / 2: three
    logarithms, none of a ratio, and no difference of row entropies (which would cancel ~10 bits
    to leave a JSD of ~1e-3 at float32 precision). Zeros count as 0 log 0 = 0 (clamped to the
    smallest normal float: a term of ~1e-36). Temporaries live in ``workspace``."""
    workspace = workspace or Workspace()
    tiny = torch.finfo(p.dtype).tiny
    out = []
    for r0, r1 in _row_chunks(p.shape[-2]):
        a, b = p[..., r0:r1, :], q[..., r0:r1, :]
        logs, acc, mid = (workspace.take(name, a.shape, a) for name in ("jsd_log", "jsd_acc", "jsd_mid"))
        torch.clamp(a, min=tiny, out=acc).log2_().mul_(a)  # p log2 p
        acc.addcmul_(b, torch.clamp(b, min=tiny, out=logs).log2_())  # + q log2 q
        torch.lerp(a, b, 0.5, out=mid).clamp_(min=tiny)
        acc.mul_(0.5).addcmul_(mid, torch.log2(mid, out=logs), value=-1.0)  # - m log2 m
        out.append(acc.sum(-1).clamp_(min=0))
    return torch.cat(out, dim=-1)


def position_dependence_aligned(
    aligned: torch.Tensor, ok: torch.Tensor, first: int, profile: torch.Tensor, workspace: Workspace | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total-variation sums of ``offset_aligned`` rows (queries first ..) against the rows an
    offset profile [H, width] predicts, pred_i(d) = P(d) / sum_{d' < i} P(d') for 0 <= d < i
    (keys 1 .. i): (sum over queries i >= 2 of TV(Ã_i, pred_i) [H], number of usable rows [H]).

    ``aligned`` may hold only offsets d < D (a sliding-window layer: every entry further back is
    exactly zero); the predicted mass at offsets D <= d < i then counts in full."""
    heads, n, width = aligned.shape
    full = first + n
    if width > full:
        raise ValueError(f"offset_aligned rows hold {width} offsets; queries {first}..{full - 1} have at most {full}")
    skip = max(0, 2 - first)
    if skip >= n:
        zero = torch.zeros(heads, device=aligned.device)
        return zero, zero.clone()
    profile = profile.to(aligned.device)
    if profile.shape[-1] < full:  # offsets past the profile read its last entry
        profile = torch.cat([profile, profile[:, -1:].expand(-1, full - profile.shape[-1])], dim=-1)
    profile = profile[:, :full]
    cum = profile.cumsum(-1)
    norm = cum[:, first - 1 + skip : first - 1 + n].clamp(min=1e-12)  # sum_{d < i} P(d)
    pred = (workspace or Workspace()).take("pred", (heads, n - skip, width), aligned)  # offsets backwards
    torch.div(profile[:, :width].flip(-1).unsqueeze(1), norm.unsqueeze(-1), out=pred)
    queries = torch.arange(first + skip, full, device=aligned.device)  # i
    masked = max(0, width - first - skip)  # columns c = D-1-d with d >= i for some row
    if masked:
        columns = torch.arange(masked, device=aligned.device)
        pred[..., :masked].masked_fill_(columns <= (width - 1 - queries)[:, None], 0.0)
    tv = pred.sub_(aligned[:, skip:]).abs_().sum(-1)
    if width < full:  # predicted mass at offsets width <= d < i, where the rows are zero
        tail = (cum[:, queries - 1] - cum[:, width - 1 : width]).clamp(min=0) / norm
        tv += tail * (queries > width)
    tv.mul_(0.5)
    ok = ok[:, skip:]
    return (tv * ok).sum(-1), ok.sum(-1).to(tv.dtype)


def position_dependence_rows(
    rows: torch.Tensor, first: int, profile: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total-variation sums of a chunk of causal rows against the rows an offset profile predicts:
    (sum over queries i >= 2 of TV(Ã_i, predicted_i) [H], number of usable rows [H])."""
    aligned, ok = offset_aligned(rows, first)
    return position_dependence_aligned(aligned, ok, first, profile)


def position_dependence(block: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """PDS per head on one block: 1 - mean over queries i >= 2 of TV(Ã_i, predicted_i).

    Ã is the row with the first token removed and renormalised; predicted_i is the row the
    head's offset profile alone would give. 1 = attention is fully determined by relative
    offset; 0 = offset explains none of it. [H, L, L] -> [H].
    """
    heads, length, _ = block.shape
    if length < 3:
        return torch.full((heads,), float("nan"))
    tv_sum = torch.zeros(heads, device=block.device)
    rows = torch.zeros(heads, device=block.device)
    for r0, r1 in _row_chunks(length):
        tv, n = position_dependence_rows(block[:, r0:r1], r0, profile)
        tv_sum, rows = tv_sum + tv, rows + n
    return (1.0 - tv_sum / rows.clamp(min=1)).cpu()


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


def chunked_nll(unembed, hidden: torch.Tensor, batch, chunk: int = 256) -> tuple[float, int]:
    """(sum, count) of next-token NLL from the final normalised hidden state, unembedding
    ``chunk`` positions at a time (Gemma-3's 262k vocabulary would need GBs at once)."""
    total, count = 0.0, 0
    width = hidden.shape[1]
    for c0 in range(0, width - 1, chunk):
        c1 = min(width - 1, c0 + chunk)
        logp = torch.log_softmax(unembed(hidden[:, c0:c1]), dim=-1)
        target = batch.input_ids[:, c0 + 1 : c1 + 1]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        valid = (batch.attention_mask[:, c0 + 1 : c1 + 1] * batch.attention_mask[:, c0:c1]).to(nll.dtype)
        total += float((nll * valid).sum())
        count += int(valid.sum())
    return total, count


def nll_by_position(unembed, hidden: torch.Tensor, batch, chunk: int = 256, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL summed over the batch per *real-token* position of the predicted token's
    context (position t predicts token t + 1): (sums [T-1], counts [T-1]), ``chunk`` positions
    unembedded at a time. Left padding is undone with ``batch.offsets``. ``stride`` > 1 scores
    only every stride-th position of the padded row (the others keep count 0): the exact loss at
    those positions, for a fraction of the unembedding (Gemma-3's 262k-token vocabulary costs more
    per token than its 18 layers)."""
    width = hidden.shape[1]
    sums, counts = torch.zeros(max(width - 1, 0)), torch.zeros(max(width - 1, 0))
    offsets = batch.offsets.cpu()
    scored = torch.arange(0, max(width - 1, 0), stride)
    for c0 in range(0, len(scored), chunk):
        at = scored[c0 : c0 + chunk]
        logp = torch.log_softmax(unembed(hidden[:, at.to(hidden.device)]), dim=-1)
        target = batch.input_ids[:, at + 1]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).float().cpu()
        valid = (batch.attention_mask[:, at + 1] * batch.attention_mask[:, at]).bool().cpu()
        position = at[None, :] - offsets[:, None]
        sums.index_add_(0, position[valid], nll[valid])
        counts.index_add_(0, position[valid], torch.ones(int(valid.sum())))
    return sums, counts


def nll_capture(name: str = "nll") -> "Capture":
    """A capture of the final hidden state that keeps only (sum, count) of the next-token NLL."""
    from .sites import Capture

    return Capture(name, "final_norm", lambda hidden, ctx: chunked_nll(ctx.unembed, hidden, ctx.batch))
