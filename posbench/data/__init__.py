"""Datasets and input generators (one dataset per module, behind ``Dataset``).

``datasets/`` in the repository holds the data files only (no ``__init__.py``, so it never
shadows HuggingFace ``datasets``); it installs as ``posbench/_datasets``. The code that
generates, loads and validates them lives here; ``posbench.registry.datasets()`` lists every
registered dataset.
"""

from __future__ import annotations

from .base import Dataset, Field, data_dir, non_empty, read_text_file
from .judge import JudgeDataset
from .kv import KVDataset
from .mcq import MCQDataset
from .mdqa import MDQADataset
from .patch_pairs import PatchPairsDataset
from .refusal import RefusalDataset
from .refusal_phrases import REFUSAL_PHRASES, is_refusal, refusal_match, refusal_score, refusal_token_ids
from .segments import ScoredItem, SegmentedPrompt
from .sweeps import PositionBiasDataset
from .texts import (
    TextDataset,
    load_texts,
    natural_sequences,
    natural_texts,
    random_token_sequences,
    repeated_token_sequences,
)

POSITION_BIAS_DATASETS: dict[str, type[PositionBiasDataset]] = {
    cls.name: cls for cls in (KVDataset, MDQADataset, MCQDataset, JudgeDataset)
}
"""The position-bias datasets by name (``python -m posbench.data NAME`` regenerates one)."""

__all__ = [
    "POSITION_BIAS_DATASETS", "JudgeDataset", "KVDataset", "MCQDataset", "MDQADataset", "PatchPairsDataset", "PositionBiasDataset",
    "REFUSAL_PHRASES", "RefusalDataset",
    "Dataset", "Field", "ScoredItem", "SegmentedPrompt", "TextDataset", "data_dir", "load_texts", "natural_sequences", "natural_texts",
    "is_refusal", "non_empty", "random_token_sequences", "refusal_match", "refusal_score", "refusal_token_ids",
    "repeated_token_sequences", "read_text_file",
]
