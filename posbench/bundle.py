"""A result as one self-contained file: the recovery format of the results store.

When a computed result cannot be written to the store (the store stays locked past its wait, the
disk is full, the file went away), ``Store.save`` writes it here instead and says where;
``posbench import FILE`` stores it later. A bundle is a zip holding ``result.json`` (every field
of the ``ProbeResult`` except its tables, serialised exactly as the store serialises them) and
one Parquet file per table, so an imported run is identical to one saved directly.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

import pandas as pd

from .errors import MalformedDataError
from .protocols import ProbeResult

BUNDLE_FORMAT = 1
SUFFIX = ".posbench.zip"
_FIELDS = ("probe", "model_id", "config", "summary", "model_card", "interventions", "data_digest", "metadata", "run_id")


def to_parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def from_parquet(blob: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(blob))


def field_problem(fields: dict) -> str | None:
    """Why stored result fields cannot make a ``ProbeResult`` (wrong JSON types), or None.
    Stores and bundles are untrusted input: they are checked here before anything renders them."""
    for name in ("config", "summary", "model_card", "metadata"):
        if not isinstance(fields.get(name), dict):
            return f"its {name} is not a JSON object"
    for name in ("probe", "model_id", "data_digest"):
        if not isinstance(fields.get(name), str):
            return f"its {name} is not text"
    ivs = fields.get("interventions")
    if not isinstance(ivs, list) or not all(
        isinstance(iv, dict) and isinstance(iv.get("name"), str) and isinstance(iv.get("params", {}), dict) for iv in ivs
    ):
        return 'its interventions are not a list of {"name": ..., "params": {...}}'
    return None


def result_json(result: ProbeResult) -> dict:
    """The JSON-native fields of a result, as the store writes them."""
    return json.loads(json.dumps({f: getattr(result, f) for f in _FIELDS}, default=str))


def write_bundle(result: ProbeResult, folder: str | Path) -> Path:
    """Write ``result`` (its ``run_id`` must be set) into the existing ``folder`` atomically;
    return the path."""
    folder = Path(folder)
    target = folder / f"posbench-recovered-{result.run_id}{SUFFIX}"
    head = result_json(result) | {"format": BUNDLE_FORMAT, "tables": list(result.tables)}
    fd, tmp = tempfile.mkstemp(prefix=".posbench-recovering-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("result.json", json.dumps(head, indent=1))
            for i, frame in enumerate(result.tables.values()):
                zf.writestr(f"tables/{i}.parquet", to_parquet(frame))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_recovery(result: ProbeResult, folders: Iterable[Path]) -> Path:
    """``write_bundle`` into the first folder that takes it (the store's own folder, then the
    temp folder); raises the last OSError if none does."""
    error: OSError | None = None
    for folder in folders:
        try:
            return write_bundle(result, folder)
        except OSError as err:
            error = err
    assert error is not None
    raise error


def read_bundle(path: str | Path) -> ProbeResult:
    """A result back from a bundle, or a clear error when ``path`` is not one."""
    path = Path(path)
    fix = f"pass a {SUFFIX} file that posbench wrote when it could not store a result"
    if not path.is_file():
        raise MalformedDataError(f"{path} is not a file: {fix}")
    try:
        with zipfile.ZipFile(path) as zf:
            head = json.loads(zf.read("result.json").decode("utf-8"))
            if not isinstance(head, dict) or head.get("format") != BUNDLE_FORMAT:
                raise ValueError(f"unknown bundle format {head.get('format') if isinstance(head, dict) else head!r}")
            tables = {name: from_parquet(zf.read(f"tables/{i}.parquet")) for i, name in enumerate(head["tables"])}
            fields = {f: head[f] for f in _FIELDS}
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as err:
        raise MalformedDataError(f"{path} is not a posbench result bundle ({type(err).__name__}: {err}): {fix}") from None
    if not fields["run_id"] or not isinstance(fields["run_id"], str):
        raise MalformedDataError(f"{path} is not a posbench result bundle (it has no run id): {fix}")
    problem = field_problem(fields)
    if problem:
        raise MalformedDataError(f"{path} is a damaged result bundle ({problem}): {fix}")
    return ProbeResult(tables=tables, **fields)
