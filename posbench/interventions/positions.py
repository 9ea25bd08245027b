"""Integer position-id edits: input edits that rewrite ``batch.position_ids``.

* ``position-shift:OFFSET`` adds OFFSET to every position id. RoPE scores see only differences
  of positions, so a pure-RoPE model's output does not change (up to float error: a check in
  itself); a learned absolute table (GPT-2) reads other rows.
* ``shared-positions`` gives chosen segments of a segmented prompt the same start id, so they
  sit "in parallel" (Position Coupling, Cho et al. 2024; parallel context windows, Ratner et al.
  2023; Uni-Encoder): the causal mask is unchanged, only the ids are shared.
* ``position-ids:IDS`` gives real token r of every row the r-th id.

Fractional positions (interpolation) and frequency changes are activation edits of the rotary
tables (``posbench.interventions.rope_scaling``). Every edit is checked before the model runs:
no negative id, nothing beyond a learned position table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import BadOptionError, PositionIdError
from ..limits import MAX_INDEX
from ..options import build, option
from ..protocols import InputEdit

MAX_POSITION = 10**9  # largest id or offset an edit may ask for (RoPE takes any; a learned table is checked at run time)


def check_position_ids(model, batch, position_ids: torch.Tensor, owner: str) -> None:
    """Raise PositionIdError for ids a model cannot take: negative ids, or ids past the rows of a
    learned position table (RoPE takes any non-negative id)."""
    real = position_ids[batch.attention_mask.bool()]
    if real.numel() and int(real.min()) < 0:
        raise PositionIdError(f"{owner}: position id {int(real.min())} is negative; position ids start at 0")
    rows = model.card.context_length
    if model.card.position_encoding == "learned_absolute" and rows is not None and real.numel() and int(real.max()) >= rows:
        raise PositionIdError(
            f"{owner}: position id {int(real.max())} is beyond {model.model_id}'s learned position table "
            f"(rows 0-{rows - 1}); use a smaller offset or shorter inputs"
        )


class _PositionIdEdit(InputEdit):
    def _config(self, **values: Any) -> Any:
        return build(self.Config, values, owner=f"intervention '{self.name}'")

    def new_position_ids(self, batch, model) -> torch.Tensor:
        """[B, T] ids for the real tokens (pads are zeroed by ``Batch.with_position_ids``)."""
        raise NotImplementedError

    def edit_batch(self, batch, model):
        ids = self.new_position_ids(batch, model)
        check_position_ids(model, batch, ids, self.name)
        return batch.with_position_ids(ids)


# ---------------------------------------------------------------------------- shift
@dataclass
class PositionShiftConfig:
    offset: int | None = option(None, min=-MAX_POSITION, max=MAX_POSITION,
                                help="added to every position id (an integer; ids must stay non-negative)")


class PositionShift(_PositionIdEdit):
    name = "position-shift"
    showcase = ("sinks", "1000")  # does the sink stay on the first token when positions start at 1000?
    summary = "add OFFSET to every position id (RoPE sees only differences; a learned table reads other rows)"
    spec_help = "OFFSET  e.g. position-shift:1000"
    Config = PositionShiftConfig

    def __init__(self, offset: int | None = None):
        self.offset = self._config(offset=offset).offset
        if self.offset is None:
            raise BadOptionError("position-shift needs an OFFSET: write e.g. --intervention position-shift:1000")

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        return {"offset": part}

    def params(self) -> dict[str, Any]:
        return {"offset": self.offset}

    def validate(self, model) -> None:
        """An offset at or past the end of a learned position table fits no input at all."""
        rows = model.card.context_length
        if model.card.position_encoding == "learned_absolute" and rows is not None and self.offset >= rows:
            raise PositionIdError(
                f"position-shift: offset {self.offset} leaves no row of {model.model_id}'s learned position table "
                f"(rows 0-{rows - 1}) for any token; use an offset below {rows}"
            )

    def new_position_ids(self, batch, model) -> torch.Tensor:
        return batch.position_ids + self.offset


# ---------------------------------------------------------------------------- shared ids
@dataclass
class SharedPositionsConfig:
    segments: tuple[int, ...] | None = option(None, min=0, max=MAX_INDEX, nonempty=True,
                                              help="segment slots that share ids (default: all)")


class SharedPositions(_PositionIdEdit):
    """Chosen segments start at one id: the id the first of them would have. The others are laid
    out in slot order around them, and every part after a chosen segment continues after the
    longest chosen segment so far (all segments chosen: the prefix, then every segment from the
    same id, then the suffix after the longest segment)."""

    name = "shared-positions"
    showcase = ("position-bias", "")
    showcase_suite = "full"  # scored one row per answer (no packing): ~4x the plain position-bias run
    summary = "chosen segments start at the same position id (parallel segments, Position Coupling style)"
    spec_help = "[segments=0,2]  e.g. shared-positions (all segments) or shared-positions:segments=1,2"
    Config = SharedPositionsConfig

    def __init__(self, segments: Sequence[int] | None = None):
        chosen = self._config(segments=segments).segments
        self.segments = None if chosen is None else tuple(sorted(set(chosen)))
        if self.segments is not None and len(self.segments) < 2:
            raise BadOptionError("shared-positions needs at least two segments to share ids (or none: all of them)")

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        return {"segments": part}

    def params(self) -> dict[str, Any]:
        return {"segments": "all" if self.segments is None else list(self.segments)}

    def new_position_ids(self, batch, model) -> torch.Tensor:
        if batch.segments is None:
            raise PositionIdError(
                "shared-positions needs segmented prompts: build the batch with model.segment_batch, or run "
                "it under the position-bias probe"
            )
        ids = batch.position_ids.clone()
        for b, span in enumerate(batch.segments):
            n = len(span.segments)
            chosen = set(range(n)) if self.segments is None else set(self.segments)
            if max(chosen, default=-1) >= n:
                raise PositionIdError(f"shared-positions: segment {max(chosen)} does not exist in row {b} ({n} segments)")
            cols = batch.real_columns(b)
            row = ids[b, cols]
            cursor, start = int(row[0]) + span.prefix[1], None
            for s, (lo, hi) in enumerate(span.segments):
                if s in chosen:
                    start = cursor if start is None else start
                    row[lo:hi] = torch.arange(start, start + hi - lo)
                    cursor = max(cursor, start + hi - lo)
                else:
                    row[lo:hi] = torch.arange(cursor, cursor + hi - lo)
                    cursor += hi - lo
            end = span.suffix[0]
            row[end:] = torch.arange(cursor, cursor + len(row) - end)
            ids[b, cols] = row
        return ids


# ---------------------------------------------------------------------------- explicit ids
@dataclass
class PositionIdsConfig:
    ids: tuple[int, ...] = option((), min=0, max=MAX_POSITION, nonempty=True, form="ID|LOW-HIGH",
                                  help="one id per real token, in order (ranges ascend; write 7,6,5 for descending ids)")


class PositionIds(_PositionIdEdit):
    name = "position-ids"
    showcase_note = ("needs one id per token of a given prompt: run it on your own text, "
                     "e.g. posbench run sinks --data my.txt -i position-ids:...")
    summary = "give real token r of every row the r-th of the given position ids"
    spec_help = "IDS  e.g. position-ids:0-9,100-119 (integers and ranges, in order)"
    Config = PositionIdsConfig

    def __init__(self, ids: Sequence[int] = ()):
        values = list(ids) if not isinstance(ids, str) else ids
        for value in values if not isinstance(values, str) else ():
            if isinstance(value, float) and not value.is_integer():
                raise PositionIdError(
                    f"position-ids: {value!r} is not an integer; for fractional positions use position-interpolation"
                )
        self.ids = list(self._config(ids=values).ids)

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        return {"ids": part}

    def params(self) -> dict[str, Any]:
        return {"ids": _compact(self.ids)}

    def new_position_ids(self, batch, model) -> torch.Tensor:
        ids = batch.position_ids.clone()
        for b in range(batch.size):
            n = int(batch.lengths[b])
            if n > len(self.ids):
                raise PositionIdError(
                    f"position-ids: row {b} has {n} tokens but only {len(self.ids)} ids were given; give one id per token"
                )
            ids[b, batch.real_columns(b)] = torch.tensor(self.ids[:n], device=ids.device)
        return ids


def _compact(ids: list[int]) -> str:
    """Runs of consecutive ids as ranges, for the stored record: [0, 1, 2, 7] -> "0-2,7"."""
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            parts.append(str(ids[start]) if i - 1 == start else f"{ids[start]}-{ids[i - 1]}")
            start = i
    return ",".join(parts)
