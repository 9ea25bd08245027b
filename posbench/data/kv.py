"""``kv``: key-value retrieval from a JSON object (the protocol of Liu et al. 2023, "Lost in the
Middle"), with the gold pair swept over every slot.

A row is ``{"id", "pairs": [[key, value], ...], "gold"}``: uuid-like keys and values (8-4-4-4-12
lower-case hex, drawn from a seeded ``random.Random``), and the index of the pair that is asked
for. ``datasets/kv.jsonl`` ships ``KVDataset.generate(seed=0)``: 50 rows of 40 pairs.

Prompt (``row_items``): an instruction and ``{`` (prefix), one segment per pair line, then ``}``,
the asked key and ``Corresponding value:`` (suffix)::

    ...JSON object:
    {
      "6b0d...": "e1c2...",      <- one segment, trailing comma and newline included
      ...
    }

    Key: "6b0d..."
    Corresponding value:

**Every pair line carries a trailing comma, the last one too** (JSON5 / JavaScript style), so a
segment's text never depends on its slot and any order (PINE's included) reads the same way. The
choices are every value in the context as ``' "value"'`` (the quote matches how the value appears
in the context); ``gold`` is the asked value's index in row order, the same for every slot, and
``meta["gold_value"]`` holds the bare value for scoring greedy generations by substring.

Sweep: ``KVDataset.row_items(row, n_segments=None, slots=None)``: keep the first ``n_segments``
pairs (the gold one always among them), then move the gold pair to each slot in ``slots`` (None:
every slot; an int k: k evenly spaced slots; a list: those slots). ``dataset.scored_items(...)``
does every row.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from .base import Field, non_empty
from .segments import ScoredItem
from .sweeps import PositionBiasDataset, duplicate, gold_slot_items, index_problem, keep_with_gold

PREFIX = (
    "The JSON object below maps keys to values. Find the key given after it and reply with the "
    "value stored under that key.\n\nJSON object:\n{\n"
)
SUFFIX = '}}\n\nKey: "{key}"\nCorresponding value:'


def pair_line(key: str, value: str) -> str:
    """One segment: a pair of the JSON object on its own line, with its trailing comma."""
    return f'  "{key}": "{value}",\n'


def uuid_like(rng: random.Random) -> str:
    """An 8-4-4-4-12 lower-case hex string from ``rng`` (never ``uuid4``: it must follow the seed)."""
    return "-".join(f"{rng.getrandbits(4 * width):0{width}x}" for width in (8, 4, 4, 4, 12))


def _pairs_problem(pairs: list) -> str | None:
    if len(pairs) < 2:
        return "needs at least 2 pairs (one asked for, one to distract)"
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(s, str) and s.strip() for s in pair):
            return f"[{i}] must be a [key, value] pair of two non-empty strings"
        if any(ch in s for s in pair for ch in '"\\\n\r'):
            return f"[{i}] holds a quote, backslash or line break, which would break its line of the JSON object"
    for j, what in ((0, "key"), (1, "value")):
        dup = duplicate([p[j] for p in pairs])
        if dup:
            return f'repeats the {what} "{pairs[dup[1]][j]}" (pairs {dup[0]} and {dup[1]}): every {what} must be unique'
    clash = {p[0].casefold() for p in pairs} & {p[1].casefold() for p in pairs}
    if clash:
        return f'uses "{sorted(clash)[0]}" both as a key and as a value: keep keys and values apart'
    return None


class KVDataset(PositionBiasDataset):
    name = "kv"
    description = "key-value retrieval from a JSON object of uuid-like keys and values (Liu et al. 2023)"
    fields = (
        Field("id", str, check=non_empty, help="row id, unique in the file"),
        Field("pairs", list, item=list, check=_pairs_problem, help="[key, value] pairs in order"),
        Field("gold", int, help="index in pairs of the pair whose key is asked"),
    )
    builtin_file = "kv.jsonl"
    example = '{"id": "kv-000", "pairs": [["4f1c-a2", "9b07-e3"], ["d8e2-51", "06ac-7f"]], "gold": 1}'

    @classmethod
    def check_row(cls, row: dict[str, Any]) -> str | None:
        reason = index_problem(row["gold"], len(row["pairs"]), "pairs")
        return f'"gold" {reason}' if reason else None

    @classmethod
    def generate(cls, seed: int = 0, n_rows: int = 50, n_pairs: int = 40) -> "KVDataset":
        """``n_rows`` rows of ``n_pairs`` fresh uuid-like pairs, the asked pair drawn at random."""
        rng = random.Random(seed)
        rows = []
        for r in range(n_rows):
            strings: list[str] = []
            while len(strings) < 2 * n_pairs:
                s = uuid_like(rng)
                if s not in strings:
                    strings.append(s)
            pairs = [[strings[2 * i], strings[2 * i + 1]] for i in range(n_pairs)]
            rows.append({"id": f"kv-{r:03d}", "pairs": pairs, "gold": rng.randrange(n_pairs)})
        return cls(rows, source=f"generated:kv(seed={seed}, n_rows={n_rows}, n_pairs={n_pairs})")

    @classmethod
    def row_items(cls, row: dict[str, Any], n_segments: int | None = None,
                  slots: int | Iterable[int] | None = None) -> list[ScoredItem]:
        """Items with the asked pair moved to each slot, over the first ``n_segments`` pairs."""
        kept = keep_with_gold(len(row["pairs"]), row["gold"], n_segments)
        pairs = [row["pairs"][i] for i in kept]
        gold = kept.index(row["gold"])
        key, value = pairs[gold]
        return gold_slot_items(
            row["id"],
            prefix=PREFIX,
            segments=[pair_line(k, v) for k, v in pairs],
            gold=gold,
            suffix=SUFFIX.format(key=key),
            choices=[f' "{v}"' for _, v in pairs],
            gold_choice=gold,
            slots=slots,
            meta={"dataset": cls.name, "key": key, "gold_value": value},
        )


__all__ = ["KVDataset", "pair_line", "uuid_like"]
