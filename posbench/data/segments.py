"""Segmented prompts: a prefix, N interchangeable segments (documents, options, answers) and a
suffix. The position-bias tasks build them; PINE and segment-aware interventions consume them.

``text`` is the plain concatenation; a model tokenizes the parts separately so that every
segment's tokens are known (``HookedModel.segment_batch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence


@dataclass(frozen=True)
class SegmentedPrompt:
    prefix: str
    segments: tuple[str, ...]
    suffix: str

    def __post_init__(self):
        object.__setattr__(self, "segments", tuple(self.segments))

    @property
    def text(self) -> str:
        return self.prefix + "".join(self.segments) + self.suffix

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    def permuted(self, order: Sequence[int]) -> "SegmentedPrompt":
        """The same prompt with segment ``order[i]`` placed in slot i."""
        if sorted(order) != list(range(len(self.segments))):
            raise ValueError(f"order {list(order)} is not a permutation of {len(self.segments)} segments")
        return replace(self, segments=tuple(self.segments[i] for i in order))


@dataclass(frozen=True)
class ScoredItem:
    """One test item of a position-bias task, scored by the log-likelihood of its choices.

    ``choices`` are continuations of ``prompt`` (option labels " A".." D", judge labels, or the
    candidate answers of a retrieval task); ``gold`` indexes the correct one. ``gold_segment``
    is the slot (segment index) that holds the gold information, ``None`` where no slot does.
    ``meta`` carries what the metrics group by (n_segments, shift, order, ...).
    """

    item_id: str
    prompt: SegmentedPrompt
    choices: tuple[str, ...]
    gold: int
    gold_segment: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "choices", tuple(self.choices))
        if not 0 <= self.gold < len(self.choices):
            raise ValueError(f"gold {self.gold} outside the {len(self.choices)} choices of {self.item_id}")
