"""Position-bias metrics: pure functions over tidy tables (no model).

The probe hands over ``scores`` (one row per item x variant x choice, see ``scores.py``) or an
attention table (one row per item x variant x layer x slot); every function returns a tidy
DataFrame or a small dict of them. Definitions: docs/position-bias-metrics.md.
"""

from __future__ import annotations

from .attention import apply_attnrank, attention_profile, attention_shape, attnrank_order, attnrank_profile
from .choice_bias import judge_metrics, label_recall, pride, rstd, selection_rates
from .curves import SHAPE_STATS, shape_stats
from .position_bias import content_consistency, invariance_check, length_sweep, shape_summary, u_curve
from .scores import SCORE_COLUMNS, predictions

__all__ = [
    "SCORE_COLUMNS", "SHAPE_STATS", "apply_attnrank", "attention_profile", "attention_shape", "attnrank_order",
    "attnrank_profile", "content_consistency", "invariance_check", "judge_metrics", "label_recall", "length_sweep",
    "predictions", "pride", "rstd", "selection_rates", "shape_stats", "shape_summary", "u_curve",
]
