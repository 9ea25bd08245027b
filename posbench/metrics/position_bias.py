"""Position-bias metrics over the scores table: the U curve, its shape, the context-length sweep,
content consistency across orders, and the invariance check.

Lost in the middle: Liu et al., "Lost in the Middle: How Language Models Use Long Contexts",
TACL 2024 (accuracy by the gold document's / key's position). Definitions:
docs/position-bias-metrics.md.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from posbench.errors import BadOptionError

from .curves import curve_table, shape_table, slot_curves
from .scores import predictions, require_columns

_CURVE_NAMES = {
    "correct": ("accuracy", "acc_lo", "acc_hi"),
    "gold_logprob": ("gold_logprob", "lp_lo", "lp_hi"),
    "gold_logp_norm": ("gold_logp_norm", "norm_lo", "norm_hi"),
}


def _gold_slot_curves(scores, normalise, by, n_boot, seed):
    preds = predictions(scores, normalise)
    require_columns(preds, by, "scores")
    return slot_curves(preds, values=list(_CURVE_NAMES), slot="gold_slot",
                       group=["task", "n_segments", *by], n_boot=n_boot, seed=seed)


def u_curve(
    scores: pd.DataFrame,
    *,
    normalise: bool = False,
    by: Sequence[str] = (),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy and gold log-probability by gold slot (Liu et al., TACL 2024, "lost in the middle").

    One row per task x n_segments x ``by`` x gold_slot: ``accuracy, acc_lo, acc_hi,
    gold_logprob, lp_lo, lp_hi, gold_logp_norm, norm_lo, norm_hi, n_items``. Each value is the
    mean over items (an item's variants at one slot are averaged first); ``*_lo/*_hi`` are
    percentile bootstrap intervals at level ``ci`` over ``n_boot`` resamples of the item_ids
    with replacement (``numpy.random.default_rng(seed)``; ``n_boot=0``: no interval, NaN).
    Items whose gold is in no slot (gold_slot NaN) are left out. MCQ accuracy per gold slot is
    this table on the mcq rows.
    """
    curves = _gold_slot_curves(scores, normalise, by, n_boot, seed)
    return curve_table(curves, "gold_slot", _CURVE_NAMES, ci)


def shape_summary(
    scores: pd.DataFrame,
    *,
    normalise: bool = False,
    by: Sequence[str] = (),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """The U curve's shape in numbers, with bootstrap CIs on the same resamples as ``u_curve``.

    For each curve (``metric``: accuracy, gold_logprob, gold_logp_norm), with first = the value
    at slot 0, last = at slot n_segments - 1, interior = the measured slots in between:
    primacy = first - mean(interior); recency = last - mean(interior); middle_dip =
    (first + last) / 2 - min(interior); worst_slot = argmin (earliest on ties; no CI);
    spread = max - min. With n_segments = 2 there is no middle: primacy, recency and
    middle_dip are NaN. One row per task x n_segments x ``by`` x metric x stat:
    ``value, lo, hi``.
    """
    curves = _gold_slot_curves(scores, normalise, by, n_boot, seed)
    return shape_table(curves, {v: names[0] for v, names in _CURVE_NAMES.items()}, ci)


def length_sweep(
    scores: pd.DataFrame,
    length: str,
    bins: int | Sequence[float] = 4,
    **curve_options,
) -> pd.DataFrame:
    """The U curve per total-length bucket: ``u_curve`` grouped by ``length_lo, length_hi``.

    ``length`` names a per-variant column of prompt length (e.g. ``meta_prompt_tokens``).
    ``bins``: explicit edges (buckets ``[lo, hi)``; lengths outside are dropped) or a number of
    equal-count buckets over the item x variant lengths. ``curve_options`` go to ``u_curve``.
    """
    require_columns(scores, [length], "scores")
    if isinstance(bins, (int, np.integer)):
        per_variant = scores.drop_duplicates(["task", "item_id", "variant"])[length].to_numpy(float)
        edges = np.unique(np.quantile(per_variant, np.linspace(0, 1, int(bins) + 1)))
        edges[-1] = np.nextafter(edges[-1], np.inf)  # the longest prompt falls in the last bucket
    else:
        edges = np.asarray(bins, float)
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise BadOptionError(f"length bins need at least two increasing edges, got {list(edges)}")
    bucket = np.searchsorted(edges, scores[length].to_numpy(float), side="right") - 1
    inside = (bucket >= 0) & (bucket < edges.size - 1)
    bucketed = scores.loc[inside].assign(length_lo=edges[bucket[inside]], length_hi=edges[bucket[inside] + 1])
    by = ["length_lo", "length_hi", *curve_options.pop("by", ())]
    return u_curve(bucketed, by=by, **curve_options)


def item_consistency(preds: pd.DataFrame) -> pd.DataFrame:
    """Per item seen in two or more variants: did it choose the same ``meta_content`` in every
    variant (``consistent``), and was it right in every variant (``all_correct``)?"""
    require_columns(preds, ["meta_content"], "scores (for content consistency)")
    per_item = preds.groupby(["task", "n_segments", "item_id"], sort=True).agg(
        n_variants=("variant", "size"),
        n_contents=("meta_content", "nunique"),
        all_correct=("correct", "all"),
    )
    per_item = per_item[per_item["n_variants"] >= 2]
    return per_item.assign(consistent=per_item["n_contents"] == 1).reset_index()


def content_consistency(scores: pd.DataFrame, *, normalise: bool = False) -> pd.DataFrame:
    """Permutation consistency (Zheng et al., ICLR 2024; PINE's swap flips, Wang et al., ICLR 2025):
    the share of items whose chosen *content* (``meta_content`` of the predicted choice) is the
    same in every variant (every cyclic shift, both answer orders). Items seen in a single
    variant are left out. One row per task x n_segments: ``n_items, consistency, flip_rate``
    (``flip_rate = 1 - consistency``: the share whose choice moves with the order).
    """
    per_item = item_consistency(predictions(scores, normalise))
    out = per_item.groupby(["task", "n_segments"], sort=True).agg(
        n_items=("item_id", "size"), consistency=("consistent", "mean"))
    return out.assign(flip_rate=1 - out["consistency"]).reset_index()


def invariance_check(scores: pd.DataFrame, *, normalise: bool = False, atol: float = 1e-9) -> pd.DataFrame:
    """What an order-invariant model must show: a flat curve, consistency 1, flip rate 0.

    One row per task x n_segments: ``acc_spread`` and ``lp_spread`` (max - min over gold slots
    of accuracy and gold_logprob), ``consistency`` and ``flip_rate`` (NaN without a
    ``meta_content`` column), and ``invariant``: both spreads <= ``atol`` and, where measured,
    consistency == 1.
    """
    curve = u_curve(scores, normalise=normalise, n_boot=0)
    keys = ["task", "n_segments"]
    spread = curve.groupby(keys, sort=True).agg(
        acc_spread=("accuracy", lambda s: s.max() - s.min()),
        lp_spread=("gold_logprob", lambda s: s.max() - s.min()),
    ).reset_index()
    if "meta_content" in scores.columns:
        spread = spread.merge(content_consistency(scores, normalise=normalise)[[*keys, "consistency", "flip_rate"]],
                              on=keys, how="left")
    else:
        spread = spread.assign(consistency=np.nan, flip_rate=np.nan)
    flat = (spread["acc_spread"] <= atol) & (spread["lp_spread"] <= atol)
    return spread.assign(invariant=flat & (spread["consistency"].isna() | (spread["consistency"] == 1)))
