"""The refusal trace: the refusal score at every token of a prompt and the model's own answer,
where the reasoning is, and the cliff.

Yin et al. 2025 ("Refusal Falls off a Cliff: How Safety Alignment Fails in Reasoning?") apply a
linear refusal probe at every token of prompt + reasoning + ``</think>`` and find a high plateau
that collapses over the last tokens before the answer. Here each token gets two scores from one
forward pass: the projection of ``resid_pre`` at the direction's layer on the unit refusal
direction, and the probe's probability there. The paper computes no scalar; ours
(docs/refusal.md) is

* the **decision token**: the last token before the answer (the last token of ``</think>`` and
  the whitespace after it; without reasoning, the last template token of the prompt);
* the **span**: the reasoning tokens (without the tags), or, without reasoning, the instruction
  and template tokens before the decision token;
* **cliff** = mean score over the last ``tail_fraction`` of the span minus the score at the
  decision token (positive = refusal falls before the answer);
* **largest drop**: the most negative one-token change from the span's start to the decision
  token, and how many tokens before the decision token it lands (0 = on it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from posbench.batching import run_batches
from posbench.data.refusal_phrases import refusal_score, refusal_token_ids
from posbench.progress import NO_PROGRESS, Progress
from posbench.sites import Capture

from .prompts import InstructionPrompt, build_prompt, prompt_format

if TYPE_CHECKING:  # pragma: no cover
    from posbench.model import HookedModel

    from .direction import RefusalDirection

THINK_OPEN = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
SEGMENTS = ("prefix", "instruction", "template", "reasoning", "marker", "answer")


def segment_response(pieces: Sequence[str]) -> tuple[list[str], int | None, bool]:
    """Label each response token ``reasoning``, ``marker`` (a think tag, and the whitespace right
    after ``</think>``) or ``answer``, from the tokens' decoded ``pieces``.

    Returns (labels, index of the last marker token after ``</think>`` or None, has_reasoning).
    A ``</think>`` without an opening tag closes reasoning the chat template opened (R1-style
    templates end with ``<think>\\n``); an opening tag that never closes leaves no answer
    (decision None)."""
    ends = np.cumsum([len(p) for p in pieces]) if pieces else np.array([], dtype=int)
    starts = ends - np.array([len(p) for p in pieces], dtype=int)
    text = "".join(pieces)

    def tokens_over(a: int, b: int) -> list[int]:
        return [i for i in range(len(pieces)) if starts[i] < b and ends[i] > a]

    close = THINK_CLOSE.search(text)
    opened = THINK_OPEN.search(text, 0, close.start() if close else len(text))
    if close is None and opened is None:
        return ["answer"] * len(pieces), None, False
    labels = ["reasoning"] * len(pieces)
    if opened is not None:
        for i in tokens_over(opened.start(), opened.end()):
            labels[i] = "marker"
    if close is None:
        return labels, None, True
    marker = tokens_over(close.start(), close.end())
    for i in marker:
        labels[i] = "marker"
    last = max(marker)
    while last + 1 < len(pieces) and not pieces[last + 1].strip():
        last += 1
        labels[last] = "marker"
    for i in range(last + 1, len(pieces)):
        labels[i] = "answer"
    return labels, last, True


@dataclass(frozen=True)
class TracedSequence:
    """A prompt and the model's response (stop token removed), with a segment per token and the
    decision token (an index into ``ids``; None when the reasoning never closed)."""

    prompt: InstructionPrompt
    response: tuple[int, ...]
    segments: tuple[str, ...]
    decision: int | None
    has_reasoning: bool

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prompt.ids + self.response

    @classmethod
    def build(cls, tokenizer, prompt: InstructionPrompt, response: Sequence[int]) -> "TracedSequence":
        pieces = [tokenizer.decode([t], skip_special_tokens=False) for t in response]
        labels, last_marker, has_reasoning = segment_response(pieces)
        n = len(prompt.ids)
        head = (["prefix"] * prompt.instruction_start + ["instruction"] * (prompt.template_start - prompt.instruction_start)
                + ["template"] * prompt.n_post)
        if last_marker is not None:
            decision = n + last_marker
        elif not has_reasoning:
            decision = n - 1
        else:
            decision = None
        return cls(prompt, tuple(response), tuple(head + labels), decision, has_reasoning)

    def span(self) -> list[int]:
        """The tokens the cliff's tail is taken from (see the module docstring)."""
        if self.decision is None:
            return []
        reasoning = [i for i, s in enumerate(self.segments) if s == "reasoning" and i < self.decision]
        if reasoning:
            return reasoning
        return list(range(self.prompt.instruction_start, self.decision))


def cliff_metrics(scores: np.ndarray, span: Sequence[int], decision: int | None, tail_fraction: float) -> dict[str, float]:
    """Cliff, tail mean, decision score and largest one-token drop of one traced sequence
    (NaN where there is no decision token or no span)."""
    out = {"tail_mean": math.nan, "decision_score": math.nan, "cliff": math.nan,
           "largest_drop": math.nan, "largest_drop_at": math.nan}
    if decision is None or not len(span):
        return out
    tail = list(span)[-max(1, math.ceil(tail_fraction * len(span))):]
    out["tail_mean"] = float(np.mean(scores[tail]))
    out["decision_score"] = float(scores[decision])
    out["cliff"] = out["tail_mean"] - out["decision_score"]
    window = scores[span[0]: decision + 1]
    if len(window) > 1:
        steps = np.diff(window)
        k = int(np.argmin(steps))
        out["largest_drop"] = float(steps[k])
        out["largest_drop_at"] = float(len(window) - 2 - k)
    return out


TOKEN_COLUMNS = ["index", "rel", "segment", "token", "projection", "probability"]


def token_rows(tokenizer, s: TracedSequence, o: "TraceOutput") -> list[tuple]:
    """One row per token of a traced sequence, ``TOKEN_COLUMNS``: ``rel`` counts from the decision
    token (from the last token where the reasoning never closed)."""
    decision = s.decision if s.decision is not None else len(s.ids) - 1
    return [(t, t - decision, seg, tokenizer.decode([tok]), float(o.projection[t]), float(o.probability[t]))
            for t, (tok, seg) in enumerate(zip(s.ids, s.segments))]


def sequence_cliffs(s: TracedSequence, o: "TraceOutput", tail_fraction: float) -> dict[str, float]:
    """``cliff_metrics`` of the projection and of the probability, keyed ``{metric}_{score}``."""
    return {f"{key}_{score}": value
            for score, values in (("projection", o.projection), ("probability", o.probability))
            for key, value in cliff_metrics(values, s.span(), s.decision, tail_fraction).items()}


# ---------------------------------------------------------------------------- the forward pass
@dataclass
class TraceOutput:
    """What one traced sequence's forward pass gives: per-token projection and probe probability,
    and at the decision token the refusal score (Arditi), each head's direct contribution to the
    projection ([layer, head], layers before the direction's), and the other terms of the sum."""

    projection: np.ndarray
    probability: np.ndarray
    refusal_score: float
    head_direct: np.ndarray  # [L*, H]
    attn: np.ndarray  # [L*] attn_out . r̂
    mlp: np.ndarray  # [L*] mlp_out . r̂
    embed: float  # resid_pre[0] . r̂
    decision: int  # the token the decision-token terms were read at

    @property
    def projection_at_decision(self) -> float:
        return float(self.projection[self.decision])


def _rows_at(x: torch.Tensor, ctx, key: str = "decision") -> torch.Tensor:
    """x[b, column of row b's token ``row_meta[b][key]``] for every row of the batch."""
    batch = ctx.batch
    cols = torch.tensor([int(batch.offsets[b]) + int(batch.row_meta[b][key]) for b in range(batch.size)],
                        device=x.device)
    return x[torch.arange(batch.size, device=x.device), cols]


@torch.no_grad()
def trace_sequences(
    model: "HookedModel",
    sequences: Sequence[TracedSequence],
    direction: "RefusalDirection",
    refusal_ids: Sequence[int],
    *,
    batch_size: int = 8,
    progress: Progress = NO_PROGRESS,
) -> list[TraceOutput]:
    """One forward pass per batch under the active interventions: every token's projection on
    the direction and probe probability at the direction's layer, and the decision-token terms
    of the head attribution. Sequences whose reasoning never closed use their last token."""
    layer = direction.layer
    r_hat = direction.unit.float()
    weight, bias = direction.probe_weight.float(), direction.probe_bias
    through_heads = {}  # W_O[h] @ r̂ per layer, [H, d]: a head's direct term is z_h . (W_O[h] @ r̂)
    for l in range(layer):
        w_o = model.backend.head_output_weights(l).float()
        through_heads[l] = w_o @ r_hat.to(w_o.device)

    def per_token(x, ctx):
        xs = x.float()
        proj = xs @ r_hat.to(x.device)
        logit = xs @ weight.to(x.device) + bias
        return [(proj[b, ctx.batch.real_columns(b)].cpu(), logit[b, ctx.batch.real_columns(b)].cpu())
                for b in range(ctx.batch.size)]

    def projected(x, ctx):
        return (_rows_at(x, ctx).float() @ r_hat.to(x.device)).cpu()

    def head_terms(z, ctx):  # z [B, T, H, d] -> [B, H]
        u = through_heads[ctx.layer].to(z.device)
        return torch.einsum("bhd,hd->bh", _rows_at(z, ctx).float(), u).cpu()

    def final_hidden(x, ctx):
        return _rows_at(x, ctx).float()

    before = tuple(range(layer))
    captures = [Capture("score", "resid_pre", per_token, layers=(layer,)),
                Capture("embed", "resid_pre", projected, layers=(0,)),
                Capture("final", "final_norm", final_hidden)]
    if before:
        captures += [Capture("heads", "z", head_terms, layers=before),
                     Capture("attn", "attn_out", projected, layers=before),
                     Capture("mlp", "mlp_out", projected, layers=before)]
    ids = [list(s.ids) for s in sequences]
    meta = [{"decision": s.decision if s.decision is not None else len(s.ids) - 1} for s in sequences]
    outputs: list[TraceOutput] = []
    n_heads = model.n_heads
    for _, batch, out in run_batches(model, ids, captures, batch_size=batch_size, row_meta=meta, progress=progress):
        scores = refusal_score(model.backend.unembed(out.captured["final"]), refusal_ids).cpu()
        for b in range(batch.size):
            proj, logit = out.captured["score"][layer][b]
            outputs.append(TraceOutput(
                projection=proj.double().numpy(),
                probability=torch.sigmoid(logit.double()).numpy(),
                refusal_score=float(scores[b]),
                head_direct=(np.stack([out.captured["heads"][l][b].double().numpy() for l in before])
                             if before else np.zeros((0, n_heads))),
                attn=np.array([float(out.captured["attn"][l][b]) for l in before]),
                mlp=np.array([float(out.captured["mlp"][l][b]) for l in before]),
                embed=float(out.captured["embed"][0][b]),
                decision=int(batch.row_meta[b]["decision"]),
            ))
    return outputs


def decision_projections(
    model: "HookedModel", sequences: Sequence[TracedSequence], direction: "RefusalDirection", *, batch_size: int = 8
) -> np.ndarray:
    """The projection on the direction at each sequence's decision token, under the active
    interventions; only the tokens up to the decision token are run (the model is causal)."""
    r_hat = direction.unit.float()

    def projected(x, ctx):
        return (_rows_at(x, ctx).float() @ r_hat.to(x.device)).cpu()

    ids, meta = [], []
    for s in sequences:
        decision = s.decision if s.decision is not None else len(s.ids) - 1
        ids.append(list(s.ids[: decision + 1]))
        meta.append({"decision": decision})
    values = []
    for _, _, out in run_batches(model, ids, [Capture("p", "resid_pre", projected, layers=(direction.layer,))],
                                 batch_size=batch_size, row_meta=meta):
        values.append(out.captured["p"][direction.layer])
    return torch.cat(values).double().numpy()


@dataclass
class ResponseTrace:
    """A given response to an instruction, traced: the sequence (segments, decision token), the
    forward pass's output, one row per token (``TOKEN_COLUMNS``) and the cliff metrics."""

    sequence: TracedSequence
    output: TraceOutput
    tokens: pd.DataFrame
    cliff: dict[str, float]


@torch.no_grad()
def trace_response(
    model: "HookedModel", direction: "RefusalDirection", instruction: str, response: "str | Sequence[int]",
    *, tail_fraction: float = 0.2,
) -> ResponseTrace:
    """Trace a response the model did not necessarily write (teacher forcing: a stored answer, a
    reasoning model's transcript, a hand-written ``<think> ... </think>`` continuation), under the
    active interventions. The instruction is rendered as the probe renders it (chat template or
    ``PLAIN_TEMPLATE``); a text response is tokenized without special tokens (tags are found in
    the decoded tokens either way)."""
    direction.check_model(model)
    prompt = build_prompt(model, instruction)
    ids = (model.tokenizer(response, add_special_tokens=False)["input_ids"] if isinstance(response, str)
           else [int(t) for t in response])
    model.check_lengths([list(prompt.ids) + list(ids)], what="prompt + response")
    seq = TracedSequence.build(model.tokenizer, prompt, ids)
    refusal_ids = refusal_token_ids(model.tokenizer, space_variants=prompt_format(model) == "plain")
    (out,) = trace_sequences(model, [seq], direction, refusal_ids, batch_size=1)
    rows = pd.DataFrame(token_rows(model.tokenizer, seq, out), columns=TOKEN_COLUMNS)
    return ResponseTrace(seq, out, rows, sequence_cliffs(seq, out, tail_fraction))
