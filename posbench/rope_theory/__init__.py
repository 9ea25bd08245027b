"""Config- and tensor-level analyses of RoPE (no forward pass needed).

* ``base_bounds``: is a model's RoPE base inside the feasible interval for the span each layer
  sees? Aliasing and DC-stability lower bounds, precision upper bound (Liu 2026,
  arXiv:2602.10959), per distinct (layer kind, base, span) of a ``ModelCard``.
* ``dope``: DoPE's per-band matrix entropy and truncated effective rank of rotated q/k
  (Xiong et al. 2025, arXiv:2511.09146), a fold-over-batches accumulator, band outliers, and
  DoPE's head/band masking selection as plain data for ``rope-zero-band`` (applied by the ``dope``
  intervention); ``gram_capture`` folds the Gram sums while hooks fire.

Definitions, provenance and the numbers for the embedded models: docs/rope-theory.md.
"""

from __future__ import annotations

from .base_bounds import (
    CONVENTIONS,
    DEFAULT_EPS,
    aliasing_bound,
    base_feasibility,
    dc_stability_bound,
    feasibility_figure,
    lowest_frequency,
    machine_epsilon,
    max_feasible_context,
    precision_bound,
    rope_inv_freq,
)
from .dope import (
    BandMask,
    GramAccumulator,
    GramSummary,
    band_entropy,
    band_entropy_from_gram,
    band_entropy_table,
    band_gram,
    band_grams_from_gram,
    dope_masks,
    gram,
    gram_capture,
    head_entropy,
    head_score_table,
    merge_grams,
    outlier_bands,
    select_heads,
    spectral_share,
    truncated_effective_rank,
    truncated_effective_rank_from_gram,
)

__all__ = [
    "CONVENTIONS", "DEFAULT_EPS", "aliasing_bound", "base_feasibility", "dc_stability_bound",
    "feasibility_figure", "lowest_frequency", "machine_epsilon", "max_feasible_context",
    "precision_bound", "rope_inv_freq",
    "BandMask", "GramAccumulator", "GramSummary", "band_entropy", "band_entropy_from_gram",
    "band_entropy_table", "band_gram", "band_grams_from_gram", "dope_masks", "gram", "gram_capture", "head_entropy",
    "head_score_table", "merge_grams", "outlier_bands", "select_heads", "spectral_share", "truncated_effective_rank",
    "truncated_effective_rank_from_gram",
]
