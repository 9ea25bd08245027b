"""Inputs for probes: the project's text corpora (``datasets/``) and token-sequence generators.

``datasets/`` in the repository is data-only (no ``__init__.py``, so it never shadows the
HuggingFace ``datasets`` package); it is installed as ``posbench/_datasets``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from .errors import EmptyDataError, MalformedDataError

if TYPE_CHECKING:  # pragma: no cover
    from .model import HookedModel


def data_dir() -> Path:
    here = Path(__file__).resolve().parent
    installed = here / "_datasets"
    return installed if installed.is_dir() else here.parent / "datasets"


def natural_texts() -> list[str]:
    """Project-written English paragraphs (48, ~120 words each): ``datasets/natural_text.jsonl``."""
    return load_texts(data_dir() / "natural_text.jsonl")


def load_texts(path: str | Path) -> list[str]:
    """Texts from a ``.jsonl`` file (one ``{"text": ...}`` object a line) or a ``.txt`` file
    (paragraphs separated by blank lines). Raises a clear error naming the bad line."""
    path = Path(path)
    if not path.is_file():
        raise MalformedDataError(f"data file {path} does not exist: pass an existing .txt or .jsonl file")
    raw = path.read_text(encoding="utf-8")
    texts: list[str] = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedDataError(
                    f"{path}:{lineno}: not valid JSON ({err.msg}): each line must be an object like "
                    '{"text": "..."}'
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise MalformedDataError(
                    f'{path}:{lineno}: row has no string field "text": each line must be an object '
                    'like {"text": "..."}'
                )
            if not row["text"].strip():
                raise MalformedDataError(f'{path}:{lineno}: "text" is empty: remove the row or fill it')
            texts.append(row["text"])
    else:
        texts = [p.strip() for p in raw.split("\n\n") if p.strip()]
    if not texts:
        raise EmptyDataError(f"{path} holds no texts: add at least one paragraph")
    return texts


def natural_sequences(
    model: "HookedModel", texts: Sequence[str], length: int | None, prepend_bos: bool | None = None
) -> list[list[int]]:
    """Tokenized texts cut to ``length`` tokens (BOS, if the tokenizer adds one, included)."""
    seqs = model.tokenize(list(texts), prepend_bos=prepend_bos)
    if length is not None:
        seqs = [s[:length] for s in seqs]
    return seqs


def _with_bos(model: "HookedModel", body: torch.Tensor) -> list[list[int]]:
    rows = body.tolist()
    if model.card.adds_bos:
        bos = model.tokenizer.bos_token_id
        rows = [[bos] + r[:-1] for r in rows]
    return rows


def random_token_sequences(model: "HookedModel", n: int, length: int, seed: int = 0) -> list[list[int]]:
    """Uniform random ordinary tokens (Gu et al.'s "random tokens"), BOS first if the model uses one."""
    gen = torch.Generator().manual_seed(seed)
    return _with_bos(model, model.random_tokens(n, length, gen))


def repeated_token_sequences(model: "HookedModel", n: int, length: int, seed: int = 0) -> list[list[int]]:
    """One random ordinary token repeated ``length`` times per sequence (BOS first if used)."""
    gen = torch.Generator().manual_seed(seed + 7919)
    tokens = model.random_tokens(n, 1, gen)
    return _with_bos(model, tokens.expand(n, length))

