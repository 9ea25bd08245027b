"""Datasets and input generators (one dataset per module, behind ``Dataset``).

``datasets/`` in the repository holds the data files only (no ``__init__.py``, so it never
shadows HuggingFace ``datasets``); it installs as ``posbench/_datasets``. The code that
generates, loads and validates them lives here. ``datasets()`` lists every registered dataset.
"""

from __future__ import annotations

from .base import Dataset, Field, data_dir, non_empty, read_text_file
from .refusal import RefusalDataset
from .refusal_phrases import REFUSAL_PHRASES, is_refusal, refusal_match, refusal_score, refusal_token_ids
from .segments import ScoredItem, SegmentedPrompt
from .texts import (
    TextDataset,
    load_texts,
    natural_sequences,
    natural_texts,
    random_token_sequences,
    repeated_token_sequences,
)

__all__ = [
    "REFUSAL_PHRASES", "RefusalDataset",
    "Dataset", "Field", "ScoredItem", "SegmentedPrompt", "TextDataset", "data_dir", "load_texts", "natural_sequences", "natural_texts",
    "is_refusal", "non_empty", "random_token_sequences", "refusal_match", "refusal_score", "refusal_token_ids",
    "repeated_token_sequences", "read_text_file",
]
