"""Texts and token sequences: the project's natural-text corpus and the content-free generators.

* ``natural_text.jsonl``: 48 project-written English paragraphs (``TextDataset``); a user's own
  ``.jsonl`` (``{"text": ...}`` a line) or ``.txt`` (paragraphs split by blank lines) loads the same way;
* random-token and repeated-token sequences (Gu et al.'s "random" and "repeated" inputs).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..errors import EmptyDataError, PosbenchWarning
from .base import Dataset, Field, data_dir, non_empty, read_text_file

if TYPE_CHECKING:  # pragma: no cover
    from ..model import HookedModel


class TextDataset(Dataset):
    name = "texts"
    description = "plain texts, one per row"
    fields = (Field("text", str, check=non_empty, help="the text"),
              Field("id", str, required=False), Field("topic", str, required=False))
    builtin_file = "natural_text.jsonl"
    example = '{"text": "A paragraph of text."}'

    @classmethod
    def from_file(cls, path: str | Path) -> "TextDataset":
        """A ``.jsonl`` file, or any other text file read as paragraphs split by blank lines."""
        path = Path(path)
        if path.suffix == ".jsonl":
            return cls.from_jsonl(path)
        raw = read_text_file(path)
        paragraphs = [p.strip() for p in raw.split("\n\n") if p.strip()]
        if not paragraphs:
            raise EmptyDataError(f"{path} holds no texts: add at least one paragraph")
        return cls([{"text": p} for p in paragraphs], source=str(path))

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.rows]


def natural_texts() -> list[str]:
    """Project-written English paragraphs (48, ~120 words each): ``datasets/natural_text.jsonl``."""
    return TextDataset.builtin().texts


def load_texts(path: str | Path) -> list[str]:
    """Texts from a ``.jsonl`` file (one ``{"text": ...}`` object a line) or a ``.txt`` file
    (paragraphs separated by blank lines). Raises a clear error naming the bad line."""
    return TextDataset.from_file(path).texts


def natural_sequences(
    model: "HookedModel", texts: Sequence[str], length: int | None, prepend_bos: bool | None = None,
    warn: bool = False,
) -> list[list[int]]:
    """Tokenized texts cut to ``length`` tokens (BOS, if the tokenizer adds one, included).

    ``warn=True`` (the user's own texts) warns when texts are cut, so a long text is never
    silently measured on its first ``length`` tokens only.
    """
    seqs = model.tokenize(list(texts), prepend_bos=prepend_bos)
    if length is not None:
        longer = [len(s) for s in seqs if len(s) > length]
        if warn and longer:
            context = model.card.context_length
            room = f" (up to {model.model_id}'s context, {context})" if context else ""
            warnings.warn(PosbenchWarning(
                f"{len(longer)} of {len(seqs)} texts are longer than seq_len={length} tokens (the longest has "
                f"{max(longer)}) and were cut to {length}: raise --seq-len{room} to measure more of them"
            ), stacklevel=2)
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


__all__ = ["TextDataset", "data_dir", "load_texts", "natural_sequences", "natural_texts",
           "random_token_sequences", "repeated_token_sequences"]
