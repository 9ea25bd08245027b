"""The four tasks as sweeps of scored items, and the tidy ``scores`` rows they turn into.

* ``kv`` and ``mdqa`` (Liu et al., "Lost in the Middle", TACL 2024): the gold segment visits
  ``slots`` gold slots among ``n_segments`` segments, the others keep their row order; every
  variant holds the same segments (a pure permutation). Choices: every candidate answer in the
  context, in row order, so choice j is content j in every variant.
* ``mcq`` and ``judge`` (Zheng et al., ICLR 2024; the swap protocol of PINE, ICLR 2025): every
  cyclic shift of the contents, and with ``label_rotations`` every rotation of the labels over
  the slots too (k x k variants); choice j is the label ``"ABCD..."[j]``.

Every choice row records ``meta_content`` (which content it names), ``meta_slot`` (the slot
that content sits in) and ``meta_label``, so the metrics can tell slot bias from label bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from posbench.data import JudgeDataset, KVDataset, MCQDataset, MDQADataset
from posbench.data.segments import ScoredItem
from posbench.data.sweeps import LABELS, PositionBiasDataset, resolve_slots

from .prompts import formatted_item

if TYPE_CHECKING:  # pragma: no cover
    from posbench.model import HookedModel

TASKS = ("kv", "mdqa", "mcq", "judge")
RETRIEVAL = ("kv", "mdqa")  # gold-slot sweeps over n_segments
CHOICE = ("mcq", "judge")  # cyclic shifts over labels
DATASETS: dict[str, type[PositionBiasDataset]] = {"kv": KVDataset, "mdqa": MDQADataset, "mcq": MCQDataset,
                                                  "judge": JudgeDataset}
SEGMENT_FIELD = {"kv": "pairs", "mdqa": "documents", "mcq": "options", "judge": "answers"}


@dataclass(frozen=True)
class TaskItem:
    """One scored item of a task with what its score rows need: the row it came from, the
    variant's name and per-variant columns, and per choice the slot its content sits in."""

    task: str
    row_id: str
    variant: str
    item: ScoredItem
    choice_slots: tuple[int, ...]
    choice_contents: tuple[int, ...]
    columns: dict[str, Any] = field(default_factory=dict)

    def score_rows(self, logprobs: Sequence[float], n_tokens: Sequence[int], prompt_tokens: int) -> list[dict]:
        """The ``scores`` rows (one per choice) of this item, given its choices' scores."""
        item = self.item
        base = {"task": self.task, "item_id": self.row_id, "variant": self.variant,
                "n_segments": item.prompt.n_segments, "gold_slot": item.gold_segment,
                "meta_prompt_tokens": prompt_tokens, **self.columns}
        return [{**base, "choice": j, "logprob": float(lp), "n_tokens": int(n), "is_gold": j == item.gold,
                 "meta_content": self.choice_contents[j], "meta_slot": self.choice_slots[j],
                 "meta_label": LABELS[j] if self.task in CHOICE else str(j)}
                for j, (lp, n) in enumerate(zip(logprobs, n_tokens))]


# ---------------------------------------------------------------------------- sweeps
def retrieval_item(task: str, item: ScoredItem, variant: str | None = None, order: Sequence[int] | None = None) -> TaskItem:
    """A kv/mdqa item. Choice j is content j (row order of the kept segments); the gold one sits
    at ``gold_segment`` and the others in row order around it. ``order`` (``order[slot]`` = the
    slot it came from) says the segments were permuted after that sweep (AttnRank);
    ``gold_segment`` is then the gold's slot after the permutation."""
    gold = item.gold
    slot = item.gold_segment if order is None else order[item.gold_segment]  # before the permutation
    slots = []
    for j in range(len(item.choices)):
        o = j - (j > gold)  # index among the other segments
        slots.append(slot if j == gold else (o if o < slot else o + 1))
    if order is not None:
        slots = [list(order).index(s) for s in slots]
    n = item.prompt.n_segments
    final_gold = slots[gold]
    return TaskItem(task, item.meta["row_id"], variant or f"n{n}:slot{final_gold}", item, tuple(slots),
                    tuple(range(len(item.choices))),
                    {"meta_depth": final_gold / (n - 1) if n > 1 else 0.0})


def choice_item(task: str, item: ScoredItem) -> TaskItem:
    """An mcq/judge item: choice j is label j, which sits in the slot ``labels.index`` gives."""
    meta = item.meta
    slots = tuple(meta["labels"].index(LABELS[j]) for j in range(len(item.choices)))
    return TaskItem(task, meta["row_id"], f"shift{meta['shift']}:labels{meta['label_shift']}", item, slots,
                    tuple(meta["order"][s] for s in slots),
                    {"meta_shift": meta["shift"], "meta_label_shift": meta["label_shift"],
                     "meta_assignment": meta["assignment"]})


def segment_count(task: str, row: dict[str, Any]) -> int:
    return len(row[SEGMENT_FIELD[task]])


def retrieval_items(task: str, rows: Sequence[dict], n_segments: int, slots: int, frame) -> list[TaskItem]:
    """The gold-slot sweep of ``rows`` at ``n_segments`` (capped per row at its own count)."""
    cls = DATASETS[task]
    out = []
    for row in rows:
        n = min(n_segments, segment_count(task, row))
        chosen = resolve_slots(n, slots if slots else None)
        for item in cls.row_items(row, n_segments=n, slots=chosen):
            out.append(retrieval_item(task, formatted_item(item, frame)))
    return out


def choice_items(task: str, rows: Sequence[dict], label_rotations: bool, frame) -> list[TaskItem]:
    """Every cyclic shift of each row (times every label rotation with ``label_rotations``)."""
    cls = DATASETS[task]
    return [choice_item(task, formatted_item(item, frame)) for row in rows
            for item in cls.row_items(row, label_shifts=None if label_rotations else (0,))]


# ---------------------------------------------------------------------------- fitting the context
def row_length(model: "HookedModel", task: str, row: dict, n: int, frame) -> int:
    """Tokens of the longest row the scoring of ``row`` at ``n`` segments runs (prompt plus the
    longest choice minus its last token; the same for every slot)."""
    item = formatted_item(DATASETS[task].row_items(row, n_segments=n, slots=[0])[0], frame)
    prompt = len(model.tokenize_segments(item.prompt)[0])
    longest = max(len(model.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in item.choices)
    return prompt + longest - 1


def fit_segments(model: "HookedModel", task: str, rows: Sequence[dict], requested: Sequence[int], limit: int,
                 frame) -> tuple[list[int], list[str]]:
    """The sizes to run: each requested n, or the largest n that fits every row within
    ``limit`` tokens (at least 2 segments); notes say what was capped or skipped."""
    sizes, notes = [], []
    most = max(segment_count(task, row) for row in rows)

    def fits(n: int) -> bool:
        return all(row_length(model, task, row, min(n, segment_count(task, row)), frame) <= limit for row in rows)

    for n in requested:
        want = min(n, most)
        lo, hi = 1, want  # largest m in [2, want] that fits, by bisection (length grows with m)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if mid >= 2 and fits(mid):
                lo = mid
            else:
                hi = mid - 1
        if lo < 2:
            notes.append(f"{task}: n_segments={n} skipped: even 2 segments exceed {limit} tokens")
            continue
        if lo != n:
            why = f"{limit} tokens" if lo < want else f"rows with {most} segments"
            notes.append(f"{task}: n_segments={n} capped to {lo} ({why})")
        if lo not in sizes:
            sizes.append(lo)
    return sizes, notes


def fitting_rows(model: "HookedModel", task: str, rows: Sequence[dict], limit: int, frame) -> tuple[list[dict], list[str]]:
    """mcq/judge rows whose prompt fits ``limit`` tokens; a note names those left out."""
    kept = [row for row in rows if row_length_choice(model, task, row, frame) <= limit]
    notes = [] if len(kept) == len(rows) else [f"{task}: {len(rows) - len(kept)} rows longer than {limit} tokens left out"]
    return kept, notes


def row_length_choice(model: "HookedModel", task: str, row: dict, frame) -> int:
    item = formatted_item(DATASETS[task].row_items(row, shifts=[0])[0], frame)
    return len(model.tokenize_segments(item.prompt)[0])
