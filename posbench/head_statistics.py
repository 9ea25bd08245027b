"""The per-head statistics the head taxonomy (``posbench.heads``) reads, folded while hooks fire.

Three passes, each one ``AttentionCapture`` fold over query-row chunks (never a T x T matrix) that
reads each chunk once for all its statistics:

* random-token sequences: offset profile P(d) (sink-free: key 0 dropped, rows renormalised),
  alpha_0, and content invariance CI = 1 - mean JSD between pairs of different random sequences;
* natural text: offset profile, alpha_0 and the position-dependence score PDS against the
  random-token profile (see docs/positional-heads.md);
* ``[BOS] r r`` (r random): duplicate-token and induction scores (Olsson et al. 2022; the
  TransformerLens head detector's patterns).

alpha_0 is Gu et al.'s first-key mass, sum over queries t >= 0 of A[t, 0] / T, **query 0
included** (its A[0, 0] is always 1), exactly as the sinks probe's ``KeyMass``, so the two agree
on the same sequences. Probes that group heads call ``measure_head_statistics`` and hand its table
to ``posbench.heads.head_traits``; a probe may fold its own captures into the natural pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from . import data as pdata
from .batching import run_batches
from .progress import NO_PROGRESS
from .reduce import (Workspace, offset_aligned, offset_counts, offset_sums_aligned, position_dependence_aligned,
                     row_jsd)
from .sites import AttentionCapture, AttentionStatistic, Capture, Context


# ---------------------------------------------------------------------------- folds
SUB_BLOCK = 1 << 18  # entries of a [H, rows, keys] sub-block folded at once: its temporaries stay in cache


def _sub_blocks(causal: torch.Tensor):
    """Row ranges ``[r0, r1)`` of a causal chunk [H, n, keys] with about ``SUB_BLOCK`` entries each.
    The paired JSD reads every entry a dozen times (three logarithms and their sums); on a chunk
    of 256 long rows (75 MB at 8k tokens) each pass would go to memory, on a sub-block to cache."""
    heads, n, keys = causal.shape
    step = max(1, min(n, SUB_BLOCK // max(heads * keys, 1)))
    for r0 in range(0, n, step):
        yield r0, min(n, r0 + step)


class OffsetProfile(AttentionStatistic):
    """Per sequence: offset sums [H, width] and counts [width] of the renormalised rows (key 0
    dropped), and alpha_0 [H] (first-key mass over all queries, query 0 included).

    Folded from the same renormalised, offset-aligned copy of each chunk (``offset_aligned``), so
    one pass serves them all: with ``reference`` [n_layers, H, width], also ``pds`` [H], the
    position-dependence score against that offset profile (NaN under 3 tokens); with ``paired``,
    also ``jsd`` [H], the mean over queries i >= 1 of JSD(A^x[i,:], A^x'[i,:]) between sequences
    2j and 2j+1 of the batch (equal lengths and padding), on sequence 2j's record (the raw
    material of content invariance). Rows are causal: keys after a chunk's last query are zero
    and are not read; on a sliding-window layer neither are keys outside every row's window.
    """

    def __init__(self, width: int, reference: torch.Tensor | None = None, paired: bool = False):
        self.width, self.reference, self.paired = width, reference, paired
        self.workspace = Workspace()  # the per-chunk temporaries, allocated once

    def start(self, ctx: Context):
        return {}

    def update(self, state, rows, start, ctx):
        blocks = {}
        window = ctx.sliding_window  # entries further back are exactly zero: neither copied nor read
        keep = None if self.reference is not None else self.width  # the PDS needs every offset
        if window is not None:
            keep = window if keep is None else min(keep, window)
        for b, block, first in ctx.sequence_rows(rows, start):
            st = state.get(b)
            if st is None:
                sums = torch.zeros(block.shape[0], min(self.width, block.shape[-1]), device=block.device)
                st = state[b] = {"sums": sums, "first": 0.0, "tv": 0.0, "rows": 0.0, "jsd": None}
            causal = block[..., : first + block.shape[1]]  # later keys are zero
            blocks[b] = causal, first
            st["first"] = st["first"] + causal[:, :, 0].sum(-1)
            aligned, ok = offset_aligned(causal, first, keep, workspace=self.workspace)
            part = offset_sums_aligned(aligned, st["sums"].shape[1])
            st["sums"][:, : part.shape[1]] += part
            if self.reference is not None:
                tv, n = position_dependence_aligned(aligned, ok, first, self.reference[ctx.layer], self.workspace)
                st["tv"], st["rows"] = st["tv"] + tv, st["rows"] + n
        if self.paired:
            batch = ctx.batch
            for i in range(0, batch.size - 1, 2):
                if i not in blocks or i + 1 not in blocks:
                    continue
                (a, first), (b, _) = blocks[i], blocks[i + 1]
                if a.shape != b.shape or int(batch.offsets[i]) != int(batch.offsets[i + 1]):
                    continue
                for r0, r1 in _sub_blocks(a):
                    q0 = first + r0 + (first + r0 == 0)  # query 0 has one key: no JSD
                    if q0 >= first + r1:
                        continue
                    lo = 0 if window is None else max(0, q0 - window + 1)
                    rows_a, rows_b = a[:, q0 - first : r1, lo : first + r1], b[:, q0 - first : r1, lo : first + r1]
                    jsd = row_jsd(rows_a, rows_b, self.workspace).sum(-1)
                    state[i]["jsd"] = jsd if state[i]["jsd"] is None else state[i]["jsd"] + jsd
        return state

    def finish(self, state, ctx):
        out = []
        for b in sorted(state):
            st, length = state[b], int(ctx.batch.lengths[b])
            record = {"sums": st["sums"].cpu(), "counts": offset_counts(length, min(self.width, length)),
                      "alpha0": (st["first"] / length).cpu()}
            if self.reference is not None:
                record["pds"] = (torch.full((ctx.facts.n_heads,), float("nan")) if length < 3
                                 else (1.0 - st["tv"] / st["rows"].clamp(min=1)).cpu())
            if self.paired:
                record["jsd"] = None if st["jsd"] is None else (st["jsd"] / max(length - 1, 1)).cpu()
            out.append(record)
        return out


class RepeatScores(AttentionStatistic):
    """Duplicate-token and induction scores on [BOS] + x + x (Olsson et al. 2022): mean attention
    from the second copy's tokens to their first occurrence, and to the token after it.

    Declares those two diagonals as entries (queries b0+n+1 .. b0+2n-1 at keys t-n and t-n+1,
    n-1 each; right padding or none): the fast path reads them off the kernel's logsumexp."""

    def __init__(self, n: int, bos: int):
        self.n, self.bos = n, bos

    def entries(self, ctx: Context):
        batch = ctx.batch
        if any(int(o) != 0 or int(length) < self.bos + 2 * self.n for o, length in zip(batch.offsets, batch.lengths)):
            return None  # left padding or a short sequence: fold rows (sequence_rows places them)
        queries = torch.arange(self.bos + self.n + 1, self.bos + 2 * self.n)
        both = torch.cat([queries, queries])
        keys = torch.cat([queries - self.n, queries - self.n + 1])
        return both.expand(batch.size, -1), keys.expand(batch.size, -1)

    def start(self, ctx: Context):
        return {}

    def update(self, state, rows, start, ctx):
        if rows.dim() == 3:  # the declared entries [B, H, 2(n-1)]: duplicate half, induction half
            half = rows.shape[-1] // 2
            return {b: (rows[b, :, :half].sum(-1), rows[b, :, half:].sum(-1)) for b in range(rows.shape[0])}
        n, b0 = self.n, self.bos
        for b, block, first in ctx.sequence_rows(rows, start):
            low = max(b0 + n + 1, first)  # the second copy's queries inside this chunk (maybe none)
            queries = torch.arange(low, max(low, min(b0 + 2 * n, first + block.shape[1])))
            dup, ind = state.get(b, (0.0, 0.0))
            local = queries - first
            state[b] = (dup + block[:, local, queries - n].sum(-1), ind + block[:, local, queries - n + 1].sum(-1))
        return state

    def finish(self, state, ctx):
        count = max(self.n - 1, 1)
        return [(state[b][0] / count).cpu() for b in sorted(state)], [(state[b][1] / count).cpu() for b in sorted(state)]


# ---------------------------------------------------------------------------- inputs and passes
@dataclass
class HeadInputs:
    """The three input kinds the statistics need, as token-id sequences."""

    natural: list[list[int]]
    random: list[list[int]]
    repeated: list[list[int]]
    repeat_len: int
    prefix: int  # tokens before the repeated halves (1 with BOS, else 0)

    @classmethod
    def build(cls, model, texts: Sequence[str], seq_len: int, n_random: int, n_repeated: int, repeat_len: int,
              seed: int = 0, warn: bool = False) -> "HeadInputs":
        """``warn``: warn when texts are cut to ``seq_len`` (the user's own texts)."""
        natural = pdata.natural_sequences(model, texts, seq_len, warn=warn)
        randoms = pdata.random_token_sequences(model, n_random, seq_len, seed)
        halves = model.random_tokens(n_repeated, repeat_len, torch.Generator().manual_seed(seed + 3))
        bos = [model.tokenizer.bos_token_id] if model.card.adds_bos else []
        repeated = [bos + h.tolist() + h.tolist() for h in halves]
        for seqs in (natural, randoms, repeated):
            model.check_lengths(seqs)
        return cls(natural, randoms, repeated, repeat_len, len(bos))

    def __len__(self) -> int:
        return len(self.natural) + len(self.random) + len(self.repeated)

    def record(self) -> dict[str, Any]:
        return {"tokens": {"natural": self.natural, "random": self.random, "repeated": self.repeated},
                "sequences": {"natural": len(self.natural), "random": len(self.random), "repeated": len(self.repeated)}}


@dataclass
class HeadStatistics:
    """What ``measure_head_statistics`` returns: the per-head table (``layer, head, kv_head``,
    ``posbench.heads.STATISTICS``, ``self_score``, ``prev_token_score``), the full offset profiles
    [L, H, width] on both inputs, and the outputs of the caller's extra natural-pass captures."""

    table: pd.DataFrame
    profile_random: torch.Tensor
    profile_natural: torch.Tensor
    natural_outputs: list[dict[str, Any]] = field(default_factory=list)


def _fold_profiles(outputs, L: int, H: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums, counts, alpha0, n = torch.zeros(L, H, width), torch.zeros(L, width), torch.zeros(L, H), 0
    for out in outputs:
        for layer, per_seq in out["profile"].items():
            for r in per_seq:
                k = r["sums"].shape[1]
                sums[layer, :, :k] += r["sums"]
                counts[layer, :k] += r["counts"]
                alpha0[layer] += r["alpha0"]
        n += len(out["profile"][0])
    return sums / counts.clamp(min=1).unsqueeze(1), alpha0 / max(n, 1)


def measure_head_statistics(
    model,
    inputs: HeadInputs,
    *,
    batch_size: int,
    padding_side: str = "right",
    progress=NO_PROGRESS,
    window: int = 8,
    natural_captures: Callable[[torch.Tensor], list[Capture | AttentionCapture]] | None = None,
) -> HeadStatistics:
    """Run the three passes and reduce them to one row per (layer, head).

    ``natural_captures(profile_random)`` may add captures to the natural-text pass (they see the
    random-token profile, e.g. to read q and k at each head's own offset); their outputs come back
    in ``natural_outputs``. ``window`` is the local-window width whose mass is tabled.
    """
    L, H = model.n_layers, model.n_heads
    width = max(len(s) for s in inputs.natural + inputs.random)

    def run(seqs, captures, size):
        return [out for _, _, out in run_batches(model, seqs, captures, batch_size=size, padding_side=padding_side,
                                                 progress=progress)]

    random_out = run(inputs.random, [AttentionCapture("profile", OffsetProfile(width, paired=True))],
                     max(2, batch_size - batch_size % 2))
    profile_random, alpha0_random = _fold_profiles(random_out, L, H, width)
    jsd_sum, jsd_n = torch.zeros(L, H), 0
    for out in random_out:
        for layer, per_seq in out["profile"].items():
            for record in per_seq:
                if record["jsd"] is not None:
                    jsd_sum[layer] += record["jsd"]
        jsd_n += sum(record["jsd"] is not None for record in out["profile"][0])

    extra = natural_captures(profile_random) if natural_captures else []
    natural_out = run(inputs.natural, [AttentionCapture("profile", OffsetProfile(width, reference=profile_random)),
                                       *extra], batch_size)
    profile_natural, alpha0_natural = _fold_profiles(natural_out, L, H, width)
    pds_sum, pds_n = torch.zeros(L, H), torch.zeros(L, H)
    for out in natural_out:
        for layer, per_seq in out["profile"].items():
            for pds in (record["pds"] for record in per_seq):
                ok = ~torch.isnan(pds)
                pds_sum[layer][ok] += pds[ok]
                pds_n[layer][ok] += 1

    dup_sum, ind_sum, rep_n = torch.zeros(L, H), torch.zeros(L, H), 0
    for out in run(inputs.repeated, [AttentionCapture("repeat", RepeatScores(inputs.repeat_len, inputs.prefix))],
                   batch_size):
        for layer, (dups, inds) in out["repeat"].items():
            for d, i in zip(dups, inds):
                dup_sum[layer] += d
                ind_sum[layer] += i
        rep_n += len(out["repeat"][0][0])

    ci = 1.0 - jsd_sum / max(jsd_n, 1)
    rows = []
    for layer in range(L):
        for head in range(H):
            pr, pn = profile_random[layer, head], profile_natural[layer, head]
            rows.append({
                "layer": layer, "head": head, "kv_head": model.card.kv_head_of(head),
                "alpha0_natural": float(alpha0_natural[layer, head]),
                "alpha0_random": float(alpha0_random[layer, head]),
                "prev_token_score": float(pr[1]), "self_score": float(pr[0]),
                "top_offset_random": int(pr.argmax()), "top_score_random": float(pr.max()),
                "top_offset_natural": int(pn.argmax()), "top_score_natural": float(pn.max()),
                "window_mass_random": float(pr[: window + 1].sum()),
                "window_mass_natural": float(pn[: window + 1].sum()),
                "content_invariance": float(ci[layer, head]),
                "pds": float(pds_sum[layer, head] / pds_n[layer, head].clamp(min=1)),
                "duplicate_score": float(dup_sum[layer, head] / max(rep_n, 1)),
                "induction_score": float(ind_sum[layer, head] / max(rep_n, 1)),
            })
    return HeadStatistics(pd.DataFrame(rows), profile_random, profile_natural,
                          [{k: v for k, v in out.captured.items() if k != "profile"} for out in natural_out])


__all__ = ["HeadInputs", "HeadStatistics", "OffsetProfile", "RepeatScores", "measure_head_statistics"]
