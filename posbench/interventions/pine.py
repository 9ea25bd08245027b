"""PINE: position-invariant inference over interchangeable segments.

Wang et al., "Eliminating Position Bias of Language Models: A Mechanistic Approach", ICLR 2025
(arXiv 2407.01100; authors' code ``wzq016/PINE``). A prompt is a prefix, N interchangeable
segments and a suffix (``HookedModel.segment_batch``). In every layer and head:

* attention *between* segments is bidirectional (within a segment it stays causal);
* for each query segment, and for every suffix (and continuation) token, the other segments are
  re-positioned by importance: the model's own attention on *un-rotated* q and k (the ``q``/``k``
  sites: before RoPE, after q/k-norm), averaged over each segment's tokens; the most important
  segment is placed nearest the query, the rest packed contiguously behind it;
* segments are end-aligned ("each document is the last one"); prefix and suffix keep their
  positions.

The scores depend on RoPE only through query-key position differences, so the per-(head, query,
key) positions are computed with two rotations: keys of segment s rotated by their index t inside
s, and one copy of each query per key segment rotated by its distance to that segment's assigned
start. That costs one extra score matrix over the segment keys, no T x T x d tensor, no loop over
tokens. Rotations use the layer's own cos/sin tables (``rope_cos``/``rope_sin``, read at the
positions PINE assigns, which all lie inside the row), so per-layer bases, partial rotary dims,
RoPE attention factors and any frequency edit stacked before PINE (position interpolation, a new
base, YaRN) are respected. See docs/pine.md for the choices (ties, k = 2, sliding windows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from ..batch import SegmentSpans
from ..errors import BadOptionError, PosbenchError
from ..protocols import AttentionEdit
from ..sites import AttentionOverride, Context
from ..token_order import reorder

PREFIX, SEGMENT, SUFFIX, PAD = 0, 1, 2, -1


class PineNeedsSegmentsError(PosbenchError):
    pass


@dataclass
class PineConfig:
    """PINE has no options: the segments come with the batch (``HookedModel.segment_batch``)."""


class Pine(AttentionEdit):
    name = "pine"
    showcase = ("position-bias", "")
    summary = "PINE (Wang et al. 2025): bidirectional attention between segments, positions re-assigned by importance"
    spec_help = "no arguments; needs segmented prompts (e.g. the position-bias probe)"
    Config = PineConfig
    keeps_packed_rows = True  # a continuation's positions come from the batch; the key mask applies on top
    reorders_tokens = True  # runs each row's segments in canonical order (edit_batch)

    def params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        raise BadOptionError(f"pine takes no arguments, got '{part}': write --intervention pine")

    def validate(self, model) -> None:
        if model.card.position_encoding != "rope":
            raise PosbenchError(
                f"pine needs a RoPE model; {model.model_id} uses {model.card.position_encoding} positions. "
                "PINE gives a key a different position for every query, which only a relative encoding "
                "applied inside attention can express (a learned absolute position is added to the token once)"
            )
        if not model.supports("rope_cos"):
            raise PosbenchError(f"pine needs the rotary tables (site rope_cos), which {model.model_id}'s backend does not expose")

    def edit_batch(self, batch, model):
        """The batch with every row's segments in canonical content order (``canonical_order``):
        the model runs that, and maps every output back to the user's order
        (``posbench.token_order``), so every order of the same segments is one computation."""
        if batch.segments is None:
            raise PineNeedsSegmentsError(
                "pine needs segmented prompts (prefix, interchangeable segments, suffix): build the batch "
                "with model.segment_batch(prompts), or run it under the position-bias probe"
            )
        if len(batch.segments) != batch.size:
            raise PineNeedsSegmentsError(
                f"pine: the batch has {batch.size} rows but {len(batch.segments)} segment layouts; give one per row"
            )
        return canonical_order(batch)

    def attention_overrides(self, model) -> list[AttentionOverride]:
        return [PineScores(windows=tuple(model.card.sliding_windows), softcap=model.card.attn_logit_softcap)]


# ---------------------------------------------------------------------------- canonical order
def canonical_order(batch):
    """``batch`` with each row's segments sorted by their token ids (compared lexicographically,
    so a segment that is the start of another comes first), in the columns the segments held
    between the prefix and the suffix. Segments with equal ids keep their relative order (they
    are the same tokens, so the run batch is the same either way). The order is recorded
    (``posbench.token_order.reorder``): everything outside PINE sees the user's order."""
    ids = batch.input_ids.cpu()
    columns = torch.arange(batch.width).repeat(batch.size, 1)
    spans = []
    for b, span in enumerate(batch.segments):
        off = int(batch.offsets[b])
        _check_contiguous(b, span)
        content = sorted(range(len(span.segments)), key=lambda s: ids[b, off + span.segments[s][0] : off + span.segments[s][1]].tolist())
        at, segments = span.prefix[1], []
        for s in content:
            start, stop = span.segments[s]
            columns[b, off + at : off + at + stop - start] = torch.arange(off + start, off + stop)
            segments.append((at, at + stop - start))
            at += stop - start
        spans.append(SegmentSpans(span.prefix, tuple(segments), span.suffix))
    return reorder(batch, columns, spans)


def _check_contiguous(b: int, span: SegmentSpans) -> None:
    edges = [span.prefix[1]] + [x for s in span.segments for x in s] + [span.suffix[0]]
    if span.prefix[0] != 0 or any(edges[i] != edges[i + 1] for i in range(0, len(edges), 2)):
        raise PineNeedsSegmentsError(
            f"pine: row {b}'s prefix, segments and suffix do not follow one another ({span}); "
            "build the batch with model.segment_batch"
        )


# ---------------------------------------------------------------------------- layout
@dataclass
class SegmentLayout:
    """Where each row's parts sit in the padded batch, PINE's positions for them, and the masks
    and indices that depend on the layout only (built once per batch, shared by every layer).

    ``home`` [B, T] is a token's position under PINE when nothing is re-ordered: the prefix at
    0..P-1, each segment end-aligned to E = P + sum of lengths (segment s at E - L_s ..), suffix
    and continuation at the positions the batch gives them (E.. in a plain row; a packed scoring
    row restarts each branch at the prompt's end), pads 0. Positions count from the row's first
    real token; the rotary tables are read at ``position_column`` (the column that holds it).
    """

    kind: torch.Tensor  # [B, T] PREFIX / SEGMENT / SUFFIX / PAD
    seg_of: torch.Tensor  # [B, T] segment index of a token, -1 outside segments
    home: torch.Tensor  # [B, T]
    offsets: torch.Tensor  # [B]
    lengths: torch.Tensor  # [B]
    seg_cols: torch.Tensor  # [B, N, Lmax] column of token t of segment s (T where t >= L_s)
    seg_valid: torch.Tensor  # [B, N, Lmax]
    seg_len: torch.Tensor  # [B, N] (0 for rows with fewer segments)
    seg_start: torch.Tensor  # [B, N] home position of each segment's first token
    position_column: torch.Tensor  # [B, T] a column holding position p of the row (p past the row's last: its last)
    _seen: dict = field(default_factory=dict)

    @property
    def n_segments(self) -> int:
        return int(self.seg_len.shape[1])

    @classmethod
    def of(cls, batch) -> "SegmentLayout":
        B, T = batch.size, batch.width
        device = batch.input_ids.device
        spans = batch.segments
        N = max((len(s.segments) for s in spans), default=0)
        Lmax = max((end - start for s in spans for start, end in s.segments), default=1)
        kind = torch.full((B, T), PAD, dtype=torch.long)
        seg_of = torch.full((B, T), -1, dtype=torch.long)
        home = torch.zeros((B, T), dtype=torch.long)
        seg_cols = torch.full((B, N, Lmax), T, dtype=torch.long)
        seg_len = torch.zeros((B, N), dtype=torch.long)
        seg_start = torch.zeros((B, N), dtype=torch.long)
        position_column = torch.zeros((B, T), dtype=torch.long)
        for b, span in enumerate(spans):
            off, length = int(batch.offsets[b]), int(batch.lengths[b])
            positions = _check_row(batch, b, span, length)
            prefix_end, end = span.prefix[1], span.suffix[0]
            cols = slice(off, off + length)
            kind[b, cols] = SUFFIX
            kind[b, off : off + prefix_end] = PREFIX
            home[b, cols] = positions
            position_column[b] = off + length - 1
            position_column[b, positions] = torch.arange(off, off + length)
            for s, (start, stop) in enumerate(span.segments):
                n = stop - start
                kind[b, off + start : off + stop] = SEGMENT
                seg_of[b, off + start : off + stop] = s
                home[b, off + start : off + stop] = torch.arange(end - n, end)
                seg_cols[b, s, :n] = torch.arange(off + start, off + stop)
                seg_len[b, s], seg_start[b, s] = n, end - n
        seg_valid = torch.arange(Lmax)[None, None, :] < seg_len[..., None]
        return cls(kind.to(device), seg_of.to(device), home.to(device), batch.offsets.to(device),
                   batch.lengths.to(device), seg_cols.to(device), seg_valid.to(device), seg_len.to(device),
                   seg_start.to(device), position_column.to(device))

    @cached_property
    def own(self) -> torch.Tensor:
        """[B, T, N]: token t belongs to segment n."""
        return self.seg_of[:, :, None] == torch.arange(self.n_segments, device=self.seg_of.device)

    @cached_property
    def importance_keys(self) -> torch.Tensor:
        """[B, 1, T, N, Lmax]: the segment tokens whose attention ranks the segments for a query
        (a segment query: the other segments only)."""
        return (self.seg_valid[:, None] & ~(self.own & (self.kind == SEGMENT)[..., None])[..., None])[:, None]

    @cached_property
    def segment_keys_seen(self) -> torch.Tensor:
        """[B, 1, N, T, Lmax]: a segment query sees every other segment and its own causally, a
        suffix query every segment (before any sliding window)."""
        queries = (self.kind == SEGMENT) | (self.kind == SUFFIX)
        within = (self.home - self.seg_start.gather(1, self.seg_of.clamp(min=0)))  # index inside its segment
        causal = torch.arange(self.seg_cols.shape[2], device=self.home.device) <= within[:, None, :, None]
        seen = queries[:, None, :, None] & (~self.own.transpose(1, 2)[..., None] | causal)
        return (self.seg_valid[:, :, None, :] & seen)[:, None]

    @cached_property
    def rest_cols(self) -> torch.Tensor:
        """[B, R]: the columns outside segments (prefix, suffix, continuation, padding), T past the end."""
        outside = self.seg_of < 0
        R = int(outside.sum(1).max())
        order = torch.argsort((~outside).to(torch.int8), dim=1, stable=True)[:, :R]
        return torch.where(outside.gather(1, order), order, self.seg_of.shape[1])

    def rest_seen(self, window: int | None) -> torch.Tensor:
        """[B, 1, T, R]: prefix and suffix keys are seen causally, at their own positions."""
        if window not in self._seen:
            B, T = self.home.shape
            cols = self.rest_cols.clamp(max=T - 1)
            real = self.kind != PAD
            key_real = real.gather(1, cols) & (self.rest_cols < T)
            hq, hk = self.home[:, :, None], self.home.gather(1, cols)[:, None, :]
            mask = real[:, :, None] & key_real[:, None, :] & (hk <= hq)
            if window is not None:
                mask &= hq - hk < window
            self._seen[window] = mask[:, None]
        return self._seen[window]

    def scatter_index(self, cols: torch.Tensor) -> torch.Tensor:
        """[B, 1, T * K] for key columns ``cols`` [B, K] (T: none): where query i's score for each
        of them goes in a flattened [T, T] score matrix with one spare slot (T * T) at the end."""
        T = self.home.shape[1]
        i = torch.arange(T, device=cols.device)[None, :, None]
        index = torch.where(cols[:, None, :] < T, i * T + cols[:, None, :], T * T)
        return index.reshape(cols.shape[0], 1, -1)

    @cached_property
    def rest_index(self) -> torch.Tensor:
        return self.scatter_index(self.rest_cols)

    @cached_property
    def segment_index(self) -> torch.Tensor:
        """[B, 1, N * T * Lmax]: as ``scatter_index`` for the segment slots, segment-major."""
        B, N, L = self.seg_cols.shape
        T = self.home.shape[1]
        return self.scatter_index(self.seg_cols.view(B, N * L)).view(B, T, N, L).permute(0, 2, 1, 3).reshape(B, 1, -1)


def _check_row(batch, b: int, span, length: int) -> torch.Tensor:
    """Row b's positions counted from its first real token: consecutive over the prompt (PINE
    assigns the prompt's positions itself); tokens after it (continuations) may repeat positions
    past the prompt, as a packed scoring row does (``posbench.scoring``), as long as together
    they cover one range (the rotary tables are read by position)."""
    if span.length > length:
        raise PineNeedsSegmentsError(
            f"pine: row {b}'s segment layout covers {span.length} tokens but the row has {length}; "
            "build the batch with model.segment_batch"
        )
    positions = batch.real_position_ids(b).cpu()
    positions = positions - positions[0]
    P = span.length
    after = positions[P:]
    if not (torch.equal(positions[:P], torch.arange(P)) and bool((after >= P).all())
            and torch.equal(torch.unique(positions), torch.arange(int(positions.max()) + 1 if length else 0))):
        raise PosbenchError(
            "pine assigns positions itself: it composes with a uniform position shift, not with "
            f"position ids that are not consecutive (row {b}); drop the position-id edit or put it elsewhere"
        )
    return positions


# ---------------------------------------------------------------------------- rotations
def _angles(cos: torch.Tensor, sin: torch.Tensor, batch: int) -> torch.Tensor:
    """[B, T, r]: per position, the cos then the sin of each rotary pair's angle (HF's tables
    hold each pair twice, [f_0 .. f_{r/2-1}, f_0 .. f_{r/2-1}]; the first half is enough)."""
    half = cos.shape[-1] // 2
    angles = torch.cat([cos[..., :half], sin[..., :half]], dim=-1)
    return angles.to(torch.promote_types(angles.dtype, torch.float32)).expand(batch, -1, -1)


def _table_at(table: torch.Tensor, layout: SegmentLayout, positions: torch.Tensor) -> torch.Tensor:
    """Rows of a per-position table [B, T, w] at PINE positions [B, ...] -> [B, ..., w]
    (positions are clamped into the row: those outside are never seen)."""
    B, T = layout.position_column.shape
    cols = layout.position_column.gather(1, positions.clamp(0, T - 1).reshape(B, -1))
    flat = cols[..., None].expand(-1, -1, table.shape[-1])
    return table.gather(1, flat).view(*positions.shape, table.shape[-1])


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """RoPE in HF's rotate-half layout (pair k = dims k, k + r/2; dims past r pass through) of
    x [..., d] by ``angles`` [..., r] (cos | sin per pair), broadcasting the leading dims."""
    r = angles.shape[-1]
    half = r // 2
    cos, sin = angles[..., :half], angles[..., half:]
    x1, x2 = x[..., :half], x[..., half:r]
    out = x.new_empty(torch.broadcast_shapes(x.shape[:-1], angles.shape[:-1]) + x.shape[-1:])
    torch.mul(x1, cos, out=out[..., :half]).addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=out[..., half:r]).addcmul_(x1, sin)
    out[..., r:] = x[..., r:]
    return out


# ---------------------------------------------------------------------------- scores
class PineScores(AttentionOverride):
    """The PINE score matrix of one layer (see the module docstring and docs/pine.md)."""

    needs = ("rope_cos", "rope_sin")
    reads_run_order = True  # it computes on the canonical order its edit_batch made

    def __init__(self, windows: tuple[int | None, ...], softcap: float | None):
        self.windows = windows
        self.softcap = softcap
        self._batch, self._layout = None, None

    def layout(self, batch) -> SegmentLayout:
        if self._batch is not batch:
            self._batch, self._layout = batch, SegmentLayout.of(batch)
        return self._layout

    def _cap(self, scores: torch.Tensor) -> torch.Tensor:
        return scores if self.softcap is None else torch.tanh(scores / self.softcap) * self.softcap

    def scores(self, q: torch.Tensor, k: torch.Tensor, ctx: Context) -> torch.Tensor:
        layout = self.layout(ctx.batch)
        window = self.windows[ctx.layer]
        B, T, H, d = q.shape
        Hkv = k.shape[2]
        G = H // Hkv  # query heads per key/value head (GQA): head h reads key head h // G
        if ctx.tensors["rope_cos"].shape[-1] != 2 * ctx.facts.n_pairs:
            raise PosbenchError(
                f"pine expects rotary tables of {2 * ctx.facts.n_pairs} dims (each pair's angle twice, HF's "
                f"rotate-half layout) but layer {ctx.layer} has {ctx.tensors['rope_cos'].shape[-1]}"
            )
        angles = _angles(ctx.tensors["rope_cos"], ctx.tensors["rope_sin"], B)
        dtype = torch.promote_types(q.dtype, torch.float32)  # fp32 at least (fp64 stays fp64)
        q = (q.to(dtype) * ctx.facts.scaling[ctx.layer]).transpose(1, 2).contiguous()  # [B, H, T, d], scaled once
        k = k.to(dtype).transpose(1, 2).contiguous()  # [B, Hkv, T, d]
        low = torch.finfo(q.dtype).min
        # every key column is either outside the segments or in one: each score is written once
        out = q.new_empty(B, H, T * T + 1)

        # prefix, suffix and continuation keys, at their own positions
        at_home = _table_at(angles, layout, layout.home)[:, None]
        q_home, k_home = _rotate(q, at_home), _rotate(k, at_home)
        rest_cols = layout.rest_cols.clamp(max=T - 1)[:, None, :, None].expand(-1, Hkv, -1, d)
        rest = q_home.view(B, Hkv, G * T, d) @ k_home.gather(2, rest_cols).transpose(-1, -2)
        rest = self._cap(rest.view(B, H, T, -1)).masked_fill_(~layout.rest_seen(window), low)
        out.scatter_(-1, layout.rest_index.expand(-1, H, -1), rest.view(B, H, -1))
        N, L = layout.seg_cols.shape[1:]
        if N:
            self._segment_scores(out, q, k, angles, layout, window)
        # a padding query sees no key: give it a finite, flat row. Left at the mask value, its
        # softmax is NaN once that value becomes -inf (fp64 or bf16 scores, softmax upcast to or
        # from fp32), and the NaN reaches the row's real tokens through the pad's value (0 * NaN)
        scores = out[..., : T * T].view(B, H, T, T)
        return scores.masked_fill_((layout.kind == PAD)[:, None, :, None], 0.0)

    def _segment_scores(self, out, q, k, angles, layout: SegmentLayout, window: int | None) -> None:
        """Write the scores of every segment key into ``out``: importance from un-rotated q/k,
        each query's assigned start of every segment, one copy of each query per segment rotated
        by its distance to that start, the segment's keys rotated by their index in it."""
        B, H, T, d = q.shape
        Hkv, G = k.shape[1], H // k.shape[1]
        N, L = layout.seg_cols.shape[1:]
        cols = layout.seg_cols.clamp(max=T - 1).view(B, 1, N * L, 1).expand(-1, Hkv, -1, d)
        k_seg = k.gather(2, cols)  # [B, Hkv, N * L, d]
        raw = self._cap((q.view(B, Hkv, G * T, d) @ k_seg.transpose(-1, -2)).view(B, H, T, N, L))
        start = layout.seg_start[:, None, None, :] - self._shifts(raw, layout)  # [B, H, T, N]
        dist = (layout.home[:, None, :, None] - start).transpose(2, 3)  # [B, H, N, T]
        q_seg = _rotate(q[:, :, None], _table_at(angles, layout, dist))  # [B, H, N, T, d]
        t = torch.arange(L, device=q.device).expand(B, N, L)
        k_rot = _rotate(k_seg.view(B, Hkv, N, L, d), _table_at(angles, layout, t)[:, None])
        seg = (q_seg.view(B, Hkv, G, N, T, d) @ k_rot[:, :, None].transpose(-1, -2)).view(B, H, N, T, L)
        visible = layout.segment_keys_seen
        if window is not None:
            visible = visible & (dist[..., None] - torch.arange(L, device=q.device) < window)
        seg = self._cap(seg).masked_fill_(~visible, torch.finfo(seg.dtype).min)
        out.scatter_(-1, layout.segment_index.expand(-1, H, -1), seg.view(B, H, -1))

    def _shifts(self, raw: torch.Tensor, layout: SegmentLayout) -> torch.Tensor:
        """How far back each segment s is moved for query t and head h ([B, H, T, N]): the total
        length of the segments ranked before it. A suffix query ranks the segments by its own
        attention over their tokens, length-normalised (the mean weight per token); a segment
        query by the sum of that over its segment's tokens, its own segment first. Exact ties
        go to the earlier slot: in the canonical order PINE runs (``canonical_order``), the
        segment that comes first by content."""
        B, H, T, N, _ = raw.shape
        # softmax over the segment tokens, in place: raw is not needed afterwards
        raw.masked_fill_(~layout.importance_keys, torch.finfo(raw.dtype).min)
        raw.sub_(raw.amax(dim=(-2, -1), keepdim=True)).exp_()
        mass = raw.sum(-1)  # [B, H, T, N]
        total = mass.sum(-1, keepdim=True)
        per_seg = mass / total / layout.seg_len.clamp(min=1)[:, None, None, :]
        L = layout.seg_cols.shape[2]
        tokens = layout.seg_cols.clamp(max=T - 1).view(B, 1, N * L, 1).expand(B, H, N * L, N)
        seg_to_seg = (per_seg.gather(2, tokens).view(B, H, N, L, N)
                      * layout.seg_valid[:, None, :, :, None]).sum(3)  # [B, H, N (query), N (key)]
        is_seg = layout.kind == SEGMENT
        index = layout.seg_of.clamp(min=0)[:, None, :, None].expand(B, H, T, N)
        importance = torch.where(is_seg[:, None, :, None], seg_to_seg.gather(2, index), per_seg)
        importance = importance.masked_fill(layout.own[:, None], float("inf"))
        importance = importance.masked_fill(layout.seg_len[:, None, None, :] == 0, float("-inf"))
        a, b = importance[..., :, None], importance[..., None, :]  # a: the segment that may come first
        slots = torch.arange(N, device=raw.device)
        before = (a > b) | ((a == b) & (slots[:, None] < slots[None, :]))  # [B, H, T, N (first), N (second)]
        lengths = layout.seg_len[:, None, None, None, :].float()
        return (lengths @ before.float()).squeeze(-2).long()
