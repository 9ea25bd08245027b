"""The dataset protocol: rows of one declared schema, validated on the way in.

A dataset is a list of JSON-able rows. Every dataset

* declares its fields once (``Field``: name, type, required, a check returning a reason);
* loads a user's JSONL file and rejects a malformed row with ``file:line: reason`` and the fix;
* can be generated from a seed by code in the package (``generate(seed, ...)``) and ships a small
  generated copy in ``datasets/`` (``builtin()``);
* gives a ``record()`` (name, source, rows, digest) that goes into every result's provenance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

from ..errors import EmptyDataError, MalformedDataError

_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}


def data_dir() -> Path:
    """The shipped data files: ``posbench/_datasets`` when installed, ``datasets/`` in a checkout."""
    here = Path(__file__).resolve().parent.parent
    installed = here / "_datasets"
    return installed if installed.is_dir() else here.parent / "datasets"


MAX_DATA_BYTES = 256 * 2**20  # data files are read whole


def read_text_file(path: str | Path) -> str:
    """A data file's text, or a clear error: missing, a folder, not a regular file, too large,
    binary or not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise MalformedDataError(f"data path {path} is a folder: pass a .jsonl (or .txt) file inside it")
    if not path.exists():
        raise MalformedDataError(f"data file {path} does not exist: pass an existing .txt or .jsonl file")
    if not path.is_file():
        raise MalformedDataError(f"data path {path} is not a regular file (a device or pipe): pass a .txt or .jsonl file")
    size = path.stat().st_size
    if size > MAX_DATA_BYTES:
        raise MalformedDataError(
            f"data file {path} holds {size / 2**20:.0f} MiB; data files are read whole and may hold at most "
            f"{MAX_DATA_BYTES // 2**20} MiB: pass a smaller sample"
        )
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MalformedDataError(f"cannot read data file {path} ({err.strerror}): check its permissions") from None
    if b"\x00" in raw[:4096]:
        raise MalformedDataError(
            f"{path} looks binary (or UTF-16): data files must be UTF-8 text; re-save it as UTF-8"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise MalformedDataError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[err.start]:02x}): re-save the file as UTF-8"
        ) from None
    return text.lstrip("\ufeff")


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


@dataclass(frozen=True)
class Field:
    """One field of a dataset row.

    ``kind`` is the JSON type (str, int, float, bool, list, dict); ``item`` the element type of a
    list; ``check(value)`` returns a reason when the value is unusable (None when it is fine).
    """

    name: str
    kind: type
    required: bool = True
    item: type | None = None
    check: Callable[[Any], str | None] | None = None
    help: str = ""

    def problem(self, value: Any) -> str | None:
        if not _is_kind(value, self.kind):
            return f'"{self.name}" must be {_JSON_TYPES.get(self.kind, self.kind.__name__)}, got {_json_name(value)}'
        if self.item is not None:
            for i, element in enumerate(value):
                if not _is_kind(element, self.item):
                    return (f'"{self.name}"[{i}] must be {_JSON_TYPES.get(self.item, self.item.__name__)}, '
                            f"got {_json_name(element)}")
        if self.check is not None:
            reason = self.check(value)
            if reason:
                return f'"{self.name}" {reason}'
        return None


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _json_name(value: Any) -> str:
    for kind, name in ((bool, "true/false"), (str, "a string"), (int, "a number"), (float, "a number"),
                       (list, "a list"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def non_empty(value: Any) -> str | None:
    """A check: strings and lists must not be empty (or blank)."""
    if isinstance(value, str) and not value.strip():
        return "is empty"
    if isinstance(value, list) and not value:
        return "is an empty list"
    return None


class Dataset:
    """Rows of one schema. Subclasses set ``name``, ``fields``, ``description`` and usually
    ``builtin_file`` and ``generate``; ``check_row`` adds cross-field checks."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    fields: ClassVar[tuple[Field, ...]] = ()
    builtin_file: ClassVar[str | None] = None  # a file in datasets/
    example: ClassVar[str] = ""  # one valid JSONL line, quoted in error messages

    def __init__(self, rows: Sequence[dict[str, Any]], source: str = "in memory"):
        self.source = source
        self.rows = [dict(r) for r in rows]
        for i, row in enumerate(self.rows):
            reason = self.row_problem(row)
            if reason:
                raise MalformedDataError(f"{self.name} row {i}: {reason}{self._fix()}")
        if not self.rows:
            raise EmptyDataError(f"{self.name} data from {source} holds no rows: add at least one")

    # ------------------------------------------------------------------ validation
    @classmethod
    def row_problem(cls, row: Any) -> str | None:
        """Why ``row`` is malformed, or None."""
        if not isinstance(row, dict):
            return f"each row must be a JSON object, got {_json_name(row)}"
        for f in cls.fields:
            if f.name not in row:
                if f.required:
                    return f'missing field "{f.name}"'
                continue
            reason = f.problem(row[f.name])
            if reason:
                return reason
        if _has_lone_surrogate(row):
            return "holds a lone surrogate (\\ud800-\\udfff), which is not text: fix the escape"
        return cls.check_row(row)

    @classmethod
    def check_row(cls, row: dict[str, Any]) -> str | None:
        """Cross-field checks of one row (e.g. a gold index inside the list)."""
        return None

    @classmethod
    def _fix(cls) -> str:
        names = ", ".join(f'"{f.name}"' + ("" if f.required else " (optional)") for f in cls.fields)
        hint = f": each row is an object with {names}" if names else ""
        return hint + (f", e.g. {cls.example}" if cls.example else "")

    # ------------------------------------------------------------------ loading
    @classmethod
    def read_jsonl(cls, path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
        """Validated rows of a JSONL file and where each came from (``file:line``); a malformed
        row is rejected with ``file:line: reason`` and the fix."""
        path = Path(path)
        rows, where = [], []
        for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedDataError(f"{path}:{lineno}: not valid JSON ({err.msg}){cls._fix()}") from None
            reason = cls.row_problem(row)
            if reason:
                raise MalformedDataError(f"{path}:{lineno}: {reason}{cls._fix()}")
            rows.append(row)
            where.append(f"{path}:{lineno}")
        if not rows:
            raise EmptyDataError(f"{path} holds no rows: add at least one JSON object a line{cls._fix()}")
        return rows, where

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "Dataset":
        """Load and validate a JSONL file (one object a line); errors name file:line and the fix."""
        rows, _ = cls.read_jsonl(path)
        return cls(rows, source=str(path))

    @classmethod
    def builtin(cls) -> "Dataset":
        """The copy shipped in ``datasets/`` (generated by ``generate`` and checked in)."""
        if cls.builtin_file is None:
            return cls.generate()
        ds = cls.from_jsonl(data_dir() / cls.builtin_file)
        ds.source = f"builtin:{cls.builtin_file}"
        return ds

    @classmethod
    def generate(cls, seed: int = 0, **sizes: Any) -> "Dataset":
        raise NotImplementedError(f"dataset '{cls.name}' has no generator")

    def to_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ provenance
    def record(self) -> dict[str, Any]:
        """What a result records about its data: name, source, size and a digest of the rows."""
        from ..protocols import digest

        return {"dataset": self.name, "source": self.source, "rows": len(self.rows), "digest": digest(self.rows)}

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}': {len(self.rows)} rows from {self.source}>"
