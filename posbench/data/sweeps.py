"""What the position-bias datasets (kv, mdqa, mcq, judge) share: sweeps, checks, a base class.

Two sweeps turn a row into ``ScoredItem``s:

* **gold slot** (kv, mdqa; ``gold_slot_items``): n interchangeable segments, one of which holds
  the gold information. The gold segment is moved to each chosen slot while the others keep their
  relative (row) order, so every item of a row holds the same set of segments. The choices are
  the candidate answers in row order, so ``gold`` (a choice index) is the same for every slot.
* **cyclic shift** (mcq, judge; ``cyclic_shift_items``): k contents over fixed labels A, B, ...;
  shift s puts content (i + s) mod k in slot i. Each segment is a whole labelled block whose label
  is written in for the slot it is built for; the choices are the labels " A", " B", ... A later
  permutation of the segments (PINE) moves label and content together, so ``gold`` stays right.
  Optionally the labels rotate over the slots too (``label_shifts``), so that label-token bias
  and slot bias can be told apart.

``PositionBiasDataset`` adds ``row_items(row, **sweep)`` / ``scored_items(**sweep)`` and unique
row ids to ``Dataset``. The check helpers (``index_problem``, ``duplicate``, ``mentions``,
``one_line``) phrase the reasons that ``check_row`` returns.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

from ..errors import BadOptionError, MalformedDataError
from .base import Dataset
from .segments import ScoredItem, SegmentedPrompt

LABELS = "ABCDEFGH"


# ---------------------------------------------------------------------------- sweep arguments
def spaced_slots(n: int, k: int) -> list[int]:
    """``k`` slots spread evenly over ``n`` (first and last included; all of them when k >= n)."""
    if k < 1:
        raise BadOptionError(f"slots={k}: ask for at least 1 slot")
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({(i * (n - 1) + (k - 1) // 2) // (k - 1) for i in range(k)})


def resolve_slots(n: int, slots: int | Iterable[int] | None) -> list[int]:
    """The slots a sweep visits: every slot (None), ``k`` evenly spaced ones (an int), or the
    listed ones (negative counts from the end)."""
    if slots is None:
        return list(range(n))
    if isinstance(slots, int):
        return spaced_slots(n, slots)
    chosen = []
    for s in slots:
        if not -n <= s < n:
            raise BadOptionError(f"slot {s} is outside the {n} segments: use 0..{n - 1} (or -1 for the last)")
        if s % n not in chosen:
            chosen.append(s % n)
    if not chosen:
        raise BadOptionError("slots is empty: name at least one slot, or pass None for all")
    return chosen


def keep_with_gold(count: int, gold: int, n: int | None) -> list[int]:
    """Indices of the first ``n`` of ``count`` segments, the gold one always among them (it takes
    the place of the n-th when it lies further on)."""
    if n is None:
        return list(range(count))
    if not 1 <= n <= count:
        raise BadOptionError(f"n_segments={n}: this row has {count} segments, ask for 1..{count}")
    kept = [i for i in range(count) if i != gold][: n - 1]
    return sorted(kept + [gold])


# ---------------------------------------------------------------------------- the two sweeps
def gold_slot_items(
    row_id: str,
    *,
    prefix: str,
    segments: Sequence[str],
    gold: int,
    suffix: str,
    choices: Sequence[str],
    gold_choice: int,
    slots: int | Iterable[int] | None = None,
    meta: dict[str, Any] | None = None,
) -> list[ScoredItem]:
    """One item per slot in ``slots`` with ``segments[gold]`` moved there, the others in order."""
    n = len(segments)
    others = [s for i, s in enumerate(segments) if i != gold]
    items = []
    for slot in resolve_slots(n, slots):
        placed = others[:slot] + [segments[gold]] + others[slot:]
        items.append(ScoredItem(
            item_id=f"{row_id}:n{n}:slot{slot}",
            prompt=SegmentedPrompt(prefix, placed, suffix),
            choices=tuple(choices),
            gold=gold_choice,
            gold_segment=slot,
            meta={**(meta or {}), "row_id": row_id, "n_segments": n, "gold_slot": slot,
                  "depth": slot / (n - 1) if n > 1 else 0.0},
        ))
    return items


def resolve_shifts(k: int, shifts: Iterable[int] | None, what: str = "shift") -> list[int]:
    """The cyclic shifts a sweep visits: all ``k`` (None) or the listed ones."""
    if shifts is None:
        return list(range(k))
    chosen = []
    for s in shifts:
        if not 0 <= s < k:
            raise BadOptionError(f"{what} {s} is outside 0..{k - 1} for {k} options")
        if s not in chosen:
            chosen.append(s)
    if not chosen:
        raise BadOptionError(f"{what}s is empty: name at least one {what}, or pass None for all")
    return chosen


def cyclic_shift_items(
    row_id: str,
    *,
    prefix: str,
    contents: Sequence[str],
    correct: int,
    block: Callable[[str, str], str],
    suffix: str,
    shifts: Iterable[int] | None = None,
    label_shifts: Iterable[int] | None = (0,),
    meta: dict[str, Any] | None = None,
) -> list[ScoredItem]:
    """One item per cyclic shift s (and label rotation r): slot i holds
    ``block(labels[(i + r) % k], contents[(i + s) % k])``; the choices are the labels in
    alphabetical order, ``gold`` is the label now in front of ``contents[correct]``.

    ``label_shifts`` (default ``(0,)``: labels read A, B, ... top to bottom) rotates the labels
    over the slots too. Over every (s, r) each label and each content visits every slot equally
    often, which is what keeps a preference for a label token apart from a preference for a slot
    (Zheng et al. 2024 attribute most MCQ selection bias to the former). Variants with the same
    ``assignment = (s - r) mod k`` hold the same label-content blocks in other slots: pure
    permutations of the segments."""
    k = len(contents)
    labels = LABELS[:k]
    items = []
    for rotation in resolve_shifts(k, label_shifts, "label shift"):
        for shift in resolve_shifts(k, shifts):
            order = tuple((i + shift) % k for i in range(k))
            slot_labels = tuple(labels[(i + rotation) % k] for i in range(k))
            slot = order.index(correct)
            suffix_id = f":labels{rotation}" if rotation else ""
            items.append(ScoredItem(
                item_id=f"{row_id}:shift{shift}{suffix_id}",
                prompt=SegmentedPrompt(prefix, [block(slot_labels[i], contents[c]) for i, c in enumerate(order)], suffix),
                choices=tuple(f" {label}" for label in labels),
                gold=labels.index(slot_labels[slot]),
                gold_segment=slot,
                meta={**(meta or {}), "row_id": row_id, "n_segments": k, "gold_slot": slot, "shift": shift,
                      "order": order, "gold_content": correct, "gold_label": slot_labels[slot],
                      "label_shift": rotation, "labels": slot_labels, "assignment": (shift - rotation) % k},
            ))
    return items


# ---------------------------------------------------------------------------- row checks
def index_problem(index: int, count: int, what: str) -> str | None:
    """Why ``index`` cannot index ``count`` things called ``what`` (None when it can)."""
    if 0 <= index < count:
        return None
    return f"is {index} but there are {count} {what}: use 0..{count - 1}"


def _normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


def duplicate(texts: Sequence[str]) -> tuple[int, int] | None:
    """The first two positions holding the same text (ignoring case and spacing), or None."""
    seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        key = _normalized(text)
        if key in seen:
            return seen[key], i
        seen[key] = i
    return None


@lru_cache(maxsize=4096)
def _phrase(text: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, text.split())) + r"(?!\w)", re.IGNORECASE)


def mentions(text: str, phrase: str) -> int:
    """How often ``phrase`` occurs in ``text`` as whole words (case and spacing ignored): "4th of
    May" is not in "14th of May", "tin" not in "tinder"."""
    return len(_phrase(phrase).findall(text))


def one_line(text: str) -> str | None:
    """A check: text that is neither blank nor broken over lines."""
    if not text.strip():
        return "is empty"
    if "\n" in text or "\r" in text:
        return "holds a line break: write it on one line"
    return None


# ---------------------------------------------------------------------------- the base class
class PositionBiasDataset(Dataset):
    """A dataset whose rows turn into ``ScoredItem``s for a position sweep.

    Subclasses implement ``row_items(row, **sweep)``; ``generate(seed)`` with its default sizes
    reproduces the shipped copy. Row ids must be unique (they prefix every item id).
    """

    def __init__(self, rows, source: str = "in memory"):
        super().__init__(rows, source)
        first: dict[str, int] = {}
        for i, row in enumerate(self.rows, 1):
            if row["id"] in first:
                raise MalformedDataError(
                    f"{self.name} data from {source}: id \"{row['id']}\" is used by rows {first[row['id']]} and {i} "
                    "(counting rows from 1): give every row its own id"
                )
            first[row["id"]] = i

    @classmethod
    def row_items(cls, row: dict[str, Any], **sweep: Any) -> list[ScoredItem]:
        """The scored items of one (valid) row for a sweep."""
        raise NotImplementedError

    def scored_items(self, **sweep: Any) -> list[ScoredItem]:
        """``row_items`` of every row, in row order."""
        return [item for row in self.rows for item in self.row_items(row, **sweep)]


__all__ = ["LABELS", "PositionBiasDataset", "cyclic_shift_items", "duplicate", "gold_slot_items", "index_problem",
           "keep_with_gold", "mentions", "one_line", "resolve_shifts", "resolve_slots", "spaced_slots"]
