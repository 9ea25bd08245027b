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

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadOptionError, PosbenchError
from ..protocols import AttentionEdit
from ..sites import AttentionOverride, Context

PREFIX, SEGMENT, SUFFIX, PAD = 0, 1, 2, -1


class PineNeedsSegmentsError(PosbenchError):
    pass


class Pine(AttentionEdit):
    name = "pine"
    summary = "PINE (Wang et al. 2025): bidirectional attention between segments, positions re-assigned by importance"
    spec_help = "no arguments; needs segmented prompts (e.g. the position-bias probe)"

    def params(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_spec(cls, arg: str) -> "Pine":
        if arg:
            raise BadOptionError(f"pine takes no arguments, got '{arg}': write --intervention pine")
        return cls()

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
        """PINE leaves the batch as it is; it only checks that the batch says where the segments are."""
        if batch.segments is None:
            raise PineNeedsSegmentsError(
                "pine needs segmented prompts (prefix, interchangeable segments, suffix): build the batch "
                "with model.segment_batch(prompts), or run it under the position-bias probe"
            )
        if len(batch.segments) != batch.size:
            raise PineNeedsSegmentsError(
                f"pine: the batch has {batch.size} rows but {len(batch.segments)} segment layouts; give one per row"
            )
        return batch

    def attention_overrides(self, model) -> list[AttentionOverride]:
        return [PineScores(windows=tuple(model.card.sliding_windows), softcap=model.card.attn_logit_softcap)]


# ---------------------------------------------------------------------------- layout
@dataclass
class SegmentLayout:
    """Where each row's parts sit in the padded batch, and PINE's positions for them.

    ``home`` [B, T] is a token's position under PINE when nothing is re-ordered: the prefix at
    0..P-1, each segment end-aligned to E = P + sum of lengths (segment s at E - L_s ..), suffix
    and continuation at their own positions E.. (pads 0). Positions count from the row's first
    real token; the rotary tables are read at column ``offsets[b] + position``.
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
    tiebreak: torch.Tensor  # [B, N] a strict order by content (token ids), then slot

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
        tiebreak = torch.arange(N).repeat(B, 1) + N  # absent segments after every real one
        ids = batch.input_ids.cpu()
        for b, span in enumerate(spans):
            off, length = int(batch.offsets[b]), int(batch.lengths[b])
            _check_row(batch, b, span, length)
            prefix_end, end = span.prefix[1], span.suffix[0]
            cols = slice(off, off + length)
            kind[b, cols] = SUFFIX
            kind[b, off : off + prefix_end] = PREFIX
            home[b, cols] = torch.arange(length)
            content = []
            for s, (start, stop) in enumerate(span.segments):
                n = stop - start
                kind[b, off + start : off + stop] = SEGMENT
                seg_of[b, off + start : off + stop] = s
                home[b, off + start : off + stop] = torch.arange(end - n, end)
                seg_cols[b, s, :n] = torch.arange(off + start, off + stop)
                seg_len[b, s], seg_start[b, s] = n, end - n
                content.append((ids[b, off + start : off + stop].tolist(), s))
            for rank, (_, s) in enumerate(sorted(content)):
                tiebreak[b, s] = rank
        seg_valid = torch.arange(Lmax)[None, None, :] < seg_len[..., None]
        return cls(kind.to(device), seg_of.to(device), home.to(device), batch.offsets.to(device),
                   batch.lengths.to(device), seg_cols.to(device), seg_valid.to(device), seg_len.to(device),
                   seg_start.to(device), tiebreak.to(device))


def _check_row(batch, b: int, span, length: int) -> None:
    if span.length > length:
        raise PineNeedsSegmentsError(
            f"pine: row {b}'s segment layout covers {span.length} tokens but the row has {length}; "
            "build the batch with model.segment_batch"
        )
    positions = batch.real_position_ids(b).cpu()
    if not torch.equal(positions, positions[0] + torch.arange(length)):
        raise PosbenchError(
            "pine assigns positions itself: it composes with a uniform position shift, not with "
            f"position ids that are not consecutive (row {b}); drop the position-id edit or put it elsewhere"
        )


# ---------------------------------------------------------------------------- scores
def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF rotate-half RoPE on the first r = cos.shape[-1] dims of x (the rest pass through)."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    turned = rot * cos + torch.cat([-rot[..., half:], rot[..., :half]], dim=-1) * sin
    if not rest.shape[-1]:
        return turned
    return torch.cat([turned, rest.expand(*turned.shape[:-1], rest.shape[-1])], dim=-1)


def _table_at(table: torch.Tensor, layout: SegmentLayout, positions: torch.Tensor) -> torch.Tensor:
    """Rows of a rotary table [B|1, T, r] at PINE positions [B, ...] -> [B, ..., r]."""
    B = positions.shape[0]
    table = table.float().expand(B, -1, -1)
    last = (layout.lengths - 1).clamp(min=0).view(B, *[1] * (positions.dim() - 1))
    cols = layout.offsets.view_as(last) + torch.minimum(positions.clamp(min=0), last)
    flat = cols.reshape(B, -1, 1).expand(-1, -1, table.shape[-1])
    return table.gather(1, flat).view(*positions.shape, table.shape[-1])


class PineScores(AttentionOverride):
    """The PINE score matrix of one layer (see the module docstring and docs/pine.md)."""

    needs = ("rope_cos", "rope_sin")

    def __init__(self, windows: tuple[int | None, ...], softcap: float | None):
        self.windows = windows
        self.softcap = softcap
        self._cache: dict[Any, Any] = {}

    def _layout(self, batch) -> SegmentLayout:
        if self._cache.get("batch") is not batch:
            self._cache = {"batch": batch, "layout": SegmentLayout.of(batch)}
        return self._cache["layout"]

    def _base_mask(self, layout: SegmentLayout, window: int | None) -> torch.Tensor:
        """[B, 1, T, T]: keys seen at their home positions: prefix, suffix and the query's own
        segment, causally in PINE's positions (inside the sliding window, if any)."""
        key = ("mask", window)
        if key not in self._cache:
            real = layout.kind != PAD
            hq, hk = layout.home[:, :, None], layout.home[:, None, :]
            sq, sk = layout.seg_of[:, :, None], layout.seg_of[:, None, :]
            mask = real[:, :, None] & real[:, None, :] & (hk <= hq) & ((sk < 0) | (sk == sq))
            if window is not None:
                mask &= hq - hk < window
            self._cache[key] = mask[:, None]
        return self._cache[key]

    def _cap(self, scores: torch.Tensor) -> torch.Tensor:
        return scores if self.softcap is None else torch.tanh(scores / self.softcap) * self.softcap

    def scores(self, q: torch.Tensor, k: torch.Tensor, ctx: Context) -> torch.Tensor:
        layout = self._layout(ctx.batch)
        facts, layer = ctx.facts, ctx.layer
        scale, window = facts.scaling[layer], self.windows[layer]
        B, T, H, _ = q.shape
        G = H // k.shape[2]  # query heads per key/value head
        cos, sin = ctx.tensors["rope_cos"], ctx.tensors["rope_sin"]
        q = q.float().transpose(1, 2)  # [B, H, T, d]
        k = k.float().transpose(1, 2)  # [B, Hkv, T, d]
        low = torch.finfo(torch.float32).min

        # keys at their home positions (prefix, suffix, own segment)
        cos_h, sin_h = _table_at(cos, layout, layout.home)[:, None], _table_at(sin, layout, layout.home)[:, None]
        q_home = _rotate(q, cos_h, sin_h)
        k_home = _rotate(k, cos_h, sin_h).repeat_interleave(G, dim=1)
        base = self._cap(q_home @ k_home.transpose(-1, -2) * scale)
        seen = self._base_mask(layout, window)
        if layout.n_segments == 0:
            return base.masked_fill(~seen, low)

        # keys of the other segments: importance from un-rotated q/k, then the assigned positions
        N, Lmax = layout.seg_cols.shape[1:]
        cols = layout.seg_cols.clamp(max=T - 1).view(B, 1, N * Lmax, 1)
        k_seg = k.gather(2, cols.expand(-1, k.shape[1], -1, k.shape[-1])).view(B, -1, N, Lmax, k.shape[-1])
        q_g = q.view(B, -1, G, T, q.shape[-1])  # [B, Hkv, G, T, d]
        raw = self._cap(torch.einsum("bkgtd,bknld->bkgtnl", q_g, k_seg) * scale).reshape(B, H, T, N, Lmax)
        own = layout.seg_of[:, :, None] == torch.arange(N, device=q.device)  # [B, T, N]
        shift = self._shifts(raw, own, layout)  # [B, H, T, N]

        # query copy per key segment, rotated by its distance to that segment's assigned start
        start = layout.seg_start[:, None, None, :] - shift
        dist = (layout.home[:, None, :, None] - start).permute(0, 1, 3, 2)  # [B, H, N, T]
        q_seg = _rotate(q[:, :, None], _table_at(cos, layout, dist), _table_at(sin, layout, dist))
        t = torch.arange(Lmax, device=q.device).expand(B, N, Lmax)
        k_rot = _rotate(k_seg, _table_at(cos, layout, t)[:, None], _table_at(sin, layout, t)[:, None])
        seg = q_seg.view(B, -1, G, N, T, q.shape[-1]) @ k_rot[:, :, None].transpose(-1, -2)  # [B, Hkv, G, N, T, Lmax]
        seg = self._cap(seg.view(B, H, N, T, Lmax) * scale)

        queries = (layout.kind == SEGMENT) | (layout.kind == SUFFIX)
        visible = layout.seg_valid[:, None, :, None, :] & (queries[:, :, None] & ~own).transpose(1, 2)[:, None, :, :, None]
        if window is not None:
            visible = visible & (dist[..., None] - torch.arange(Lmax, device=q.device) < window)
        seg = seg.masked_fill(~visible, low).permute(0, 1, 3, 2, 4).reshape(B, H, T, N * Lmax)
        out = torch.full((B, H, T, T + 1), low, device=q.device)
        out.scatter_(-1, layout.seg_cols.view(B, 1, 1, N * Lmax).expand(B, H, T, -1), seg)
        return torch.where(seen, base, out[..., :T])

    def _shifts(self, raw: torch.Tensor, own: torch.Tensor, layout: SegmentLayout) -> torch.Tensor:
        """How far back each segment s is moved for query t and head h ([B, H, T, N]): the total
        length of the segments ranked before it. A segment query ranks the other segments by
        the attention its whole segment pays them (its own first); a suffix query by its own
        attention. The rank is by importance, ties broken by content."""
        B, H, T, N, _ = raw.shape
        is_seg = layout.kind == SEGMENT
        # attention of each query over the segment tokens it may re-order (a segment query: the
        # other segments only), averaged per segment
        keys = layout.seg_valid[:, None] & ~(own & is_seg[..., None])[..., None]  # [B, T, N, Lmax]
        keys = keys[:, None]
        weights = torch.softmax(raw.masked_fill(~keys, torch.finfo(raw.dtype).min).flatten(-2), dim=-1)
        per_seg = (weights.view_as(raw) * keys).sum(-1) / layout.seg_len.clamp(min=1)[:, None, None, :].float()
        # a segment query uses the sum over its segment's tokens (Imp(D_i, D_j) of the paper)
        member = (own & is_seg[..., None]).float()  # [B, T, N]
        seg_to_seg = torch.einsum("bhtn,btm->bhmn", per_seg, member)  # [B, H, N (query), N (key)]
        index = layout.seg_of.clamp(min=0)[:, None, :, None].expand(B, H, T, N)
        importance = torch.where(is_seg[:, None, :, None], seg_to_seg.gather(2, index), per_seg)
        importance = importance.masked_fill(own[:, None], float("inf"))
        importance = importance.masked_fill(layout.seg_len[:, None, None, :] == 0, float("-inf"))
        a, b = importance[..., :, None], importance[..., None, :]  # a: the segment that may come first
        tie = layout.tiebreak[:, None, None, :, None] < layout.tiebreak[:, None, None, None, :]
        before = (a > b) | ((a == b) & tie)  # [B, H, T, N (first), N (second)]
        lengths = layout.seg_len[:, None, None, None, :].float()
        return (lengths @ before.float()).squeeze(-2).long()
