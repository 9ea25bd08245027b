"""Log-likelihood of continuations after segmented prompts, and greedy continuations.

Choices are scored by their log-likelihood after the prompt (deterministic, no sampling): the
option labels of a multiple-choice question (Zheng et al., ICLR 2024, read the option-ID
probabilities), the candidate answers of a retrieval task (Liu et al., TACL 2024, generate;
scoring every candidate gives the same accuracy question a log-likelihood answer).

**Tokenization.** The prompt is tokenized part by part (``HookedModel.tokenize_segments``: only
the prefix gets the tokenizer's special tokens, each segment on its own), so every segment's
tokens are known; a continuation is tokenized **on its own, without special tokens**, and
appended. Its tokens are therefore the same after every prompt and in every order of the
segments, even where the tokenizer would merge the joined text differently across the boundary
(``"Answer:" + " A"`` gives the token ``" A"``, whatever ``"Answer: A"`` gives). Write choices
with the leading space the prompt expects (``" A"``, ``' "value"'``).

**What is computed.** ``log p(c) = sum_j log p(c_j | prompt, c_<j)``, read at the positions
P - 1 .. P + m - 2 of a row holding the prompt (P tokens) and the continuation (m tokens). The
final normalised residual (site ``final_norm``) is captured and **only the read positions are
unembedded**, 256 at a time, never a [B, T, vocab] tensor (Gemma 3's vocabulary is 262k).

**Rows.** A continuation's last token is only predicted, never read, so its row holds the
prompt and the continuation without its last token: a one-token continuation (" A") needs the
prompt alone, and all the option labels of a question come from one row. Longer continuations
are *branches* after the prompt. With ``pack`` several branches share one row: each branch sees
the prompt and its own earlier tokens (a key mask) and has the position ids P, P + 1, ... it
would have in a row of its own, so the numbers are those of one row per continuation up to the
order of floating-point sums (tested). ``pack="auto"`` packs only when every active intervention
declares ``keeps_packed_rows`` (PINE does: it reads the branches' position ids and the key mask
keeps them apart; others may rewrite position ids or masks and must see the plain rows), and keeps a packed row within the model's smallest sliding window (a
sliding-window mask counts columns, not position ids). Everything runs through ``model.run``
under the active interventions, on batches built by ``model.segment_batch``, so
``batch.segments`` (the spans of prefix, segments and suffix) is set for segment-aware
interventions such as PINE.

**Attention onto the segments.** ``attention=True`` also folds ``SegmentMass`` over every layer:
the attention from the answer position (the prompt's last token, which predicts the first
continuation token) onto each segment's tokens, per head (the "attention basin" of Yi et al.,
arXiv 2508.05128). It declares the segments' key spans as key weights, so the fast path reads
the masses from the SDPA call itself (no pattern row is built), and keeps [heads, segments] per
layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .errors import ContextTooLongError, EmptyDataError
from .progress import NO_PROGRESS, Progress
from .sites import AttentionCapture, AttentionStatistic, Capture, Context

if TYPE_CHECKING:  # pragma: no cover
    from .batch import Batch
    from .data.segments import SegmentedPrompt
    from .model import HookedModel

UNEMBED_CHUNK = 256  # read positions unembedded at once: [256, vocab]


# ---------------------------------------------------------------------------- tokens
def continuation_ids(model: "HookedModel", continuation: str | Sequence[int]) -> list[int]:
    """The token ids of a continuation: text tokenized on its own without special tokens, or
    ids passed through."""
    ids = (model.tokenizer(continuation, add_special_tokens=False)["input_ids"] if isinstance(continuation, str)
           else [int(t) for t in continuation])
    if not ids:
        raise EmptyDataError(f"continuation {continuation!r} tokenizes to nothing: give every choice some text")
    return list(ids)


# ---------------------------------------------------------------------------- the row plan
@dataclass(frozen=True)
class _Row:
    """One forward row: prompt ``prompt`` followed by ``branches`` (continuation index, tokens);
    ``reads`` lists (continuation index, read positions, targets) answered by this row."""

    prompt: int
    prompt_len: int
    branches: tuple[tuple[int, tuple[int, ...]], ...]
    reads: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]
    answer: bool  # the prompt's first row: it also reads the attention from the answer position

    @property
    def tokens(self) -> list[int]:
        return [t for _, branch in self.branches for t in branch]

    @property
    def length(self) -> int:
        return self.prompt_len + sum(len(b) for _, b in self.branches)

    @property
    def packed(self) -> bool:
        return len(self.branches) > 1


@dataclass
class ScoringPlan:
    """The forward rows that score ``continuations`` after ``prompts`` (see the module doc)."""

    prompts: list["SegmentedPrompt"]
    continuations: list[list[list[int]]]
    prompt_tokens: list[int]
    rows: list[_Row]
    pack_limit: int | None

    @property
    def n_tokens(self) -> int:
        """Real tokens over all rows: the work the forward passes do."""
        return sum(r.length for r in self.rows)


def pack_limit(model: "HookedModel", pack: str | bool) -> int | None:
    """The longest packed row allowed, or None for one row per continuation (see module doc)."""
    if pack == "auto":
        pack = all(iv.keeps_packed_rows for iv in model.interventions)
    if not pack:
        return None
    limits = [w for w in model.card.sliding_windows if w] + [model.card.context_length or 10**9]
    return min(limits)


def _prompt_rows(index: int, prompt_len: int, conts: list[list[int]], limit: int | None) -> list[_Row]:
    """Rows for one prompt: one per non-empty branch, or as many branches per row as ``limit``
    allows; one-token continuations are read from the first row."""
    branches = [(j, tuple(c[:-1])) for j, c in enumerate(conts) if len(c) > 1]
    groups: list[list[tuple[int, tuple[int, ...]]]] = []
    for branch in branches:
        fits = groups and limit is not None and prompt_len + sum(len(b) for _, b in groups[-1]) + len(branch[1]) <= limit
        if fits:
            groups[-1].append(branch)
        else:
            groups.append([branch])
    if not groups:
        groups = [[]]
    single = [j for j, c in enumerate(conts) if len(c) == 1]
    rows = []
    for g, group in enumerate(groups):
        reads, start = [], prompt_len
        for j, branch in group:
            positions = (prompt_len - 1, *range(start, start + len(branch)))
            reads.append((j, positions, tuple(conts[j])))
            start += len(branch)
        if g == 0:
            reads.extend((j, (prompt_len - 1,), tuple(conts[j])) for j in single)
        rows.append(_Row(index, prompt_len, tuple(group), tuple(reads), answer=g == 0))
    return rows


def plan_scoring(
    model: "HookedModel",
    prompts: Sequence["SegmentedPrompt"],
    continuations: Sequence[Sequence[str | Sequence[int]]],
    *,
    pack: str | bool = "auto",
    max_packed: int | None = None,
) -> ScoringPlan:
    """Tokenize and lay out the rows (nothing runs yet); fails on a row longer than the context.
    ``max_packed`` caps the length of a packed row further (memory: attention is T x T)."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} lists of continuations")
    if not prompts:
        raise EmptyDataError("nothing to score: pass at least one prompt")
    limit = pack_limit(model, pack)
    if limit is not None and max_packed is not None:
        limit = min(limit, max_packed)
    conts = [[continuation_ids(model, c) for c in cs] for cs in continuations]
    lengths, rows = [], []
    for i, (prompt, cs) in enumerate(zip(prompts, conts)):
        if not cs:
            raise EmptyDataError(f"prompt {i} has no continuations to score")
        n = len(model.tokenize_segments(prompt)[0])
        lengths.append(n)
        rows.extend(_prompt_rows(i, n, cs, limit))
    context = model.card.context_length
    longest = max(rows, key=lambda r: r.length)
    if context is not None and longest.length > context:
        raise ContextTooLongError(
            f"prompt {longest.prompt} with its continuation needs {longest.length} tokens but "
            f"{model.model_id}'s context is {context}: use fewer or shorter segments"
        )
    return ScoringPlan(list(prompts), conts, lengths, rows, limit)


# ---------------------------------------------------------------------------- reductions
def read_logprobs(hidden: torch.Tensor, ctx: Context) -> list[torch.Tensor]:
    """Per row of the batch, log p(target) at the row's read positions (``row_meta["reads"]``,
    real-token indices, and ``row_meta["targets"]``): only those positions are unembedded."""
    batch = ctx.batch
    rows, cols, targets, counts = [], [], [], []
    for b, meta in enumerate(batch.row_meta):
        reads = torch.as_tensor(meta["reads"], dtype=torch.long)
        rows.append(torch.full_like(reads, b))
        cols.append(reads + int(batch.offsets[b]))
        targets.append(torch.as_tensor(meta["targets"], dtype=torch.long))
        counts.append(len(reads))
    device = hidden.device
    picked = hidden[torch.cat(rows).to(device), torch.cat(cols).to(device)]
    target = torch.cat(targets).to(device)
    out = []
    for start in range(0, len(target), UNEMBED_CHUNK):
        logits = ctx.unembed(picked[start : start + UNEMBED_CHUNK]).float()
        out.append(logits.log_softmax(-1).gather(-1, target[start : start + UNEMBED_CHUNK, None])[:, 0])
    return list(torch.cat(out).double().cpu().split(counts))


class SegmentMass(AttentionStatistic):
    """Attention from the answer position onto each segment (Yi et al., "Attention Basin",
    arXiv 2508.05128): for every row with ``row_meta["answer"]`` (a real-token index), the
    pattern row of that query summed over each segment's key span (``batch.segments``).
    Result per layer: ``{row: [heads, n_segments]}``.

    Only sums over key spans are needed, so they are declared as key weights (one indicator
    column per segment): the fast path takes them from the SDPA call itself and builds no
    pattern row."""

    def key_weights(self, ctx: Context) -> torch.Tensor:
        batch = ctx.batch
        spans = [batch.segments[b].segments if batch.segments and batch.segments[b] is not None else ()
                 for b in range(batch.size)]
        weights = torch.zeros(batch.size, batch.width, max(1, max(map(len, spans))))
        for b, meta in enumerate(batch.row_meta):
            if meta.get("answer") is None:
                continue
            offset = int(batch.offsets[b])
            for j, (s, e) in enumerate(spans[b]):
                weights[b, offset + s : offset + e, j] = 1.0
        return weights

    def start(self, ctx: Context) -> dict[int, torch.Tensor]:
        return {}

    def update(self, state, span_sums, start, ctx):
        """span_sums [B, H, n, K]: the attention of queries start .. start+n-1 on each segment's keys."""
        batch = ctx.batch
        for b, meta in enumerate(batch.row_meta):
            answer = meta.get("answer")
            if answer is None:
                continue
            column = int(batch.offsets[b]) + answer
            if not start <= column < start + span_sums.shape[2]:
                continue
            n_segments = len(batch.segments[b].segments)
            state[b] = span_sums[b, :, column - start, :n_segments].cpu()
        return state


# ---------------------------------------------------------------------------- running
@dataclass
class ContinuationScores:
    """``logprobs[i][j]`` / ``n_tokens[i][j]``: continuation j of prompt i (``token_logprobs[i][j]``
    token by token); ``prompt_tokens[i]``; ``attention[i]`` [layers, heads, segments] when asked;
    the forward work done (rows, real tokens, packed rows)."""

    logprobs: list[list[float]]
    n_tokens: list[list[int]]
    prompt_tokens: list[int]
    attention: list[np.ndarray] | None = None
    token_logprobs: list[list[np.ndarray]] = field(default_factory=list)
    rows: int = 0
    tokens: int = 0
    packed_rows: int = 0


def _packed_layout(batch: "Batch", chunk: Sequence[_Row]) -> "Batch":
    """Position ids P, P+1, ... for every branch and a key mask keeping branches apart."""
    positions = batch.position_ids.clone()
    group = torch.full(batch.input_ids.shape, -1, dtype=torch.long)
    for b, row in enumerate(chunk):
        offset, start = int(batch.offsets[b]), row.prompt_len
        for g, (_, branch) in enumerate(row.branches):
            cols = slice(offset + start, offset + start + len(branch))
            positions[b, cols] = torch.arange(row.prompt_len, row.prompt_len + len(branch))
            group[b, cols] = g
            start += len(branch)
    out = batch.with_position_ids(positions)
    out.key_mask = ((group[:, None, :] == -1) | (group[:, None, :] == group[:, :, None])).to(batch.input_ids.device)
    return out


def run_plan(
    model: "HookedModel",
    plan: ScoringPlan,
    *,
    batch_size: int = 8,
    attention: bool = False,
    progress: Progress = NO_PROGRESS,
) -> ContinuationScores:
    """Run a plan's rows (longest first, ``batch_size`` rows a pass) under the active
    interventions; ``progress`` advances by one per row."""
    n_prompts = len(plan.prompts)
    token_lp: list[list[np.ndarray | None]] = [[None] * len(cs) for cs in plan.continuations]
    mass: list[np.ndarray | None] = [None] * n_prompts
    captures: list[Any] = [Capture("logprobs", "final_norm", read_logprobs)]
    if attention:
        captures.append(AttentionCapture("segment_mass", SegmentMass()))
    order = sorted(range(len(plan.rows)), key=lambda r: -plan.rows[r].length)
    packed = 0
    for start in range(0, len(order), batch_size):
        chunk = [plan.rows[r] for r in order[start : start + batch_size]]
        batch = model.segment_batch([plan.prompts[r.prompt] for r in chunk], "right",
                                    continuations=[r.tokens for r in chunk])
        batch.row_meta = [
            {"reads": [p for _, pos, _ in r.reads for p in pos], "targets": [t for _, _, tg in r.reads for t in tg],
             "answer": r.prompt_len - 1 if (attention and r.answer) else None}
            for r in chunk
        ]
        if any(r.packed for r in chunk):
            batch = _packed_layout(batch, chunk)
            packed += sum(r.packed for r in chunk)
        out = model.run(batch, captures)
        for b, row in enumerate(chunk):
            values = out["logprobs"][b].numpy()
            at = 0
            for j, positions, _ in row.reads:
                token_lp[row.prompt][j] = values[at : at + len(positions)]
                at += len(positions)
            if attention and row.answer:
                mass[row.prompt] = torch.stack([out["segment_mass"][layer][b] for layer in range(model.n_layers)]).numpy()
        progress.update(len(chunk))
    return ContinuationScores(
        logprobs=[[float(v.sum()) for v in per] for per in token_lp],
        n_tokens=[[len(v) for v in per] for per in token_lp],
        prompt_tokens=list(plan.prompt_tokens),
        attention=mass if attention else None,
        token_logprobs=token_lp,
        rows=len(plan.rows),
        tokens=plan.n_tokens,
        packed_rows=packed,
    )


def continuation_logprobs(
    model: "HookedModel",
    prompts: Sequence["SegmentedPrompt"],
    continuations: Sequence[Sequence[str | Sequence[int]]],
    *,
    batch_size: int = 8,
    pack: str | bool = "auto",
    attention: bool = False,
    progress: bool | Progress = False,
) -> ContinuationScores:
    """Total log-likelihood (and token count) of each continuation after its prompt.

    ``continuations[i]`` lists the choices of prompt i (texts, tokenized on their own without
    special tokens, or token ids). Runs under the model's active interventions. See the module
    docstring for tokenization, the row layout (``pack``) and ``attention``.
    """
    plan = plan_scoring(model, prompts, continuations, pack=pack)
    bar = progress if isinstance(progress, Progress) else Progress(len(plan.rows), f"scoring on {model.model_id}",
                                                                   enabled=bool(progress), unit="row")
    try:
        return run_plan(model, plan, batch_size=batch_size, attention=attention, progress=bar)
    finally:
        if bar is not progress:
            bar.close()


# ---------------------------------------------------------------------------- generation
def _last_hidden(hidden: torch.Tensor, ctx: Context) -> torch.Tensor:
    batch = ctx.batch
    last = (batch.offsets + batch.lengths - 1).to(hidden.device)
    return hidden[torch.arange(batch.size, device=hidden.device), last].float()


def greedy_continuations(
    model: "HookedModel",
    prompts: Sequence["SegmentedPrompt"],
    *,
    max_new_tokens: int = 32,
    stop_ids: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: Progress = NO_PROGRESS,
) -> list[list[int]]:
    """Greedy continuations of segmented prompts under the active interventions.

    Like ``HookedModel.generate`` (full recompute at every step, no KV cache, so edits of the
    whole sequence hold at every step) but on ``segment_batch`` rows, so ``batch.segments`` is
    set at every step and segment-aware interventions (PINE) apply while generating; the
    generated tokens follow the suffix. ``progress`` advances by one per prompt finished.
    """
    stop = set(stop_ids if stop_ids is not None else [model.tokenizer.eos_token_id])
    new: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(prompts), batch_size):
        live = list(range(start, min(start + batch_size, len(prompts))))
        for _ in range(max_new_tokens):
            if not live:
                break
            batch = model.segment_batch([prompts[i] for i in live], "right", continuations=[new[i] for i in live])
            hidden = model.run(batch, [Capture("last", "final_norm", _last_hidden)])["last"]
            tokens = model.backend.unembed(hidden).argmax(-1).tolist()
            still = []
            for i, token in zip(live, tokens):
                new[i].append(int(token))
                if token not in stop:
                    still.append(i)
                else:
                    progress.update(1)
            live = still
        progress.update(len(live))
    return new


__all__ = ["ContinuationScores", "ScoringPlan", "SegmentMass", "continuation_ids", "continuation_logprobs",
           "greedy_continuations", "pack_limit", "plan_scoring", "read_logprobs", "run_plan"]
