"""The one input contract every backend runs: a ``Batch``.

Token ids padded to one width, the attention mask, position ids derived from the mask (never left
to the model: TransformerLens #1609 and nnsight #672 returned wrong logits for left-padded
batches), and optionally per-row metadata, segment spans (prefix, interchangeable segments,
suffix) and an explicit key mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row (pads get 0).

    HuggingFace's forward does not derive these; left padding without them silently shifts
    every position (TransformerLens #1609, nnsight #672).
    """
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp(min=0) * mask


@dataclass(frozen=True)
class SegmentSpans:
    """Where a segmented prompt's parts sit among a row's real tokens: ``prefix`` and ``suffix``
    are (start, end) spans, ``segments`` one span per segment, all half-open real-token indices."""

    prefix: tuple[int, int]
    segments: tuple[tuple[int, int], ...]
    suffix: tuple[int, int]

    @property
    def length(self) -> int:
        return self.suffix[1]

    def segment_of(self) -> list[int]:
        """Per real token: its segment index, or -1 for prefix and suffix tokens."""
        out = [-1] * self.length
        for i, (start, end) in enumerate(self.segments):
            out[start:end] = [i] * (end - start)
        return out


@dataclass
class Batch:
    """Token ids padded to one width, with the mask and the mask-derived position ids.

    ``offsets[b]`` is the index of row b's first real token (its left padding), ``lengths[b]``
    its number of real tokens, so real token r of row b sits at column ``offsets[b] + r``.
    ``row_meta[b]`` carries what a probe needs per row (e.g. a tracked token's index);
    ``segments[b]`` the spans of a segmented prompt; ``key_mask`` [B, T, T] (True = may attend),
    when set, is applied on top of the model's own causal mask in every layer. ``token_order``,
    set by an input edit (``posbench.token_order.reorder``: PINE's canonical segment order), says
    that the tokens run permuted; the model maps every output back to the user's order.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    padding_side: str
    row_meta: list[dict[str, Any]] = field(default_factory=list)
    segments: list[SegmentSpans] | None = None
    key_mask: torch.Tensor | None = None
    token_order: Any = None  # posbench.token_order.TokenOrder: the tokens run in another column order

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def real_columns(self, row: int) -> slice:
        start = int(self.offsets[row])
        return slice(start, start + int(self.lengths[row]))

    def with_position_ids(self, position_ids: torch.Tensor) -> "Batch":
        """The same batch with other position ids (pads keep 0)."""
        if position_ids.shape != self.input_ids.shape:
            raise ValueError(f"position ids {tuple(position_ids.shape)} do not match the batch {tuple(self.input_ids.shape)}")
        return replace(self, position_ids=position_ids.to(self.input_ids.device) * self.attention_mask)

    def real_position_ids(self, row: int) -> torch.Tensor:
        return self.position_ids[row, self.real_columns(row)]
