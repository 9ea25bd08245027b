"""Attention-basin helpers: attention mass by slot, its shape, and AttnRank re-ordering.

Yi et al., "Attention Basin: Why Contextual Position Matters in Large Language Models"
(arXiv 2508.05128, 2025; ACL 2026): given structured items (documents, few-shot examples),
models put more attention on the first and last items than on the middle ones; AttnRank
(i) estimates a model's positional attention preference on a small calibration set and
(ii) reorders retrieved items so the most salient sit in the most-attended positions.
What posbench implements of AttnRank, and what could not be checked against the paper:
docs/position-bias-metrics.md.

Input ``attn``: one row per item x variant x layer x slot, columns ``item_id, variant, layer,
slot, mass`` (attention mass from the answer position onto the segment in ``slot``), usually
``is_gold``, optionally ``n_tokens`` (the segment's length).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from posbench.data.segments import SegmentedPrompt
from posbench.errors import BadOptionError

from .curves import curve_table, shape_table, slot_curves
from .scores import require_columns

ATTN_COLUMNS = ["item_id", "variant", "layer", "slot", "mass"]


def _mass_curves(attn, per_token, by, n_boot, seed):
    require_columns(attn, [*ATTN_COLUMNS, *by, *(["n_tokens"] if per_token else [])], "attention table")
    frame = attn.assign(mass=attn["mass"] / attn["n_tokens"]) if per_token else attn
    return slot_curves(frame, values=["mass"], slot="slot", group=["layer", *by], n_boot=n_boot, seed=seed)


def attention_profile(
    attn: pd.DataFrame,
    *,
    per_token: bool = False,
    by: Sequence[str] = (),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """The attention basin (Yi et al., 2025): mean attention mass by slot, per layer.

    One row per layer x ``by`` x slot: ``mass, mass_lo, mass_hi, n_items``; the mean is over
    items (an item's variants averaged first), the interval a percentile bootstrap over item_ids
    (as ``u_curve``). ``per_token=True`` divides each segment's mass by its ``n_tokens`` first
    (mass per token: long segments no longer look attended just for being long).
    ``by=("is_gold",)`` separates the gold segment's profile from the distractors'.
    """
    return curve_table(_mass_curves(attn, per_token, by, n_boot, seed), "slot", {"mass": ("mass", "mass_lo", "mass_hi")}, ci)


def attention_shape(
    attn: pd.DataFrame,
    *,
    per_token: bool = False,
    by: Sequence[str] = (),
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """The basin's shape per layer: primacy, recency, middle_dip, worst_slot and spread of the
    mass profile, defined as in ``shape_summary``, with bootstrap CIs on the profile's resamples.
    One row per layer x ``by`` x stat (``metric`` = "mass"): ``value, lo, hi``. A layer shows
    a basin when primacy > 0 and recency > 0 (both ends above the mean of the middle).
    """
    return shape_table(_mass_curves(attn, per_token, by, n_boot, seed), {"mass": "mass"}, ci)


def attnrank_profile(calibration: pd.DataFrame, *, layers: Sequence[int] | None = None, per_token: bool = False) -> pd.DataFrame:
    """AttnRank stage (i): the positional attention preference estimated on a calibration set.

    The mean mass per slot (``attention_profile`` without bootstrap) averaged over ``layers``
    (all layers when None). Returns one row per slot: ``slot, mass, rank`` (rank 0 = the most
    attended slot; ties go to the earlier slot).
    """
    frame = calibration if layers is None else calibration[calibration["layer"].isin(list(layers))]
    if frame.empty:
        raise BadOptionError(f"no calibration rows in layers {list(layers)}: pick layers the attention table has")
    profile = attention_profile(frame, per_token=per_token, n_boot=0).groupby("slot", sort=True)["mass"].mean()
    order = np.argsort(-profile.to_numpy(), kind="stable")
    rank = np.empty(len(order), dtype=int)
    rank[order] = np.arange(len(order))
    return pd.DataFrame({"slot": profile.index.to_numpy(), "mass": profile.to_numpy(), "rank": rank})


def attnrank_order(profile: pd.DataFrame, ranking: Sequence[int] | None = None) -> tuple[int, ...]:
    """AttnRank stage (ii): the segment order that puts the r-th most relevant segment in the
    r-th most attended slot.

    ``ranking`` lists segment indices from most to least relevant (the retriever's order);
    None means the prompt's current order is the relevance order. Returns ``order`` with
    ``order[slot]`` = the segment to place in that slot, as ``SegmentedPrompt.permuted`` takes it.
    """
    n = len(profile)
    if sorted(profile["slot"]) != list(range(n)):
        raise BadOptionError(f"the AttnRank profile must cover slots 0..{n - 1}, got {sorted(profile['slot'])}")
    ranking = list(range(n)) if ranking is None else [int(s) for s in ranking]
    if sorted(ranking) != list(range(n)):
        raise BadOptionError(f"ranking {ranking} is not a permutation of the {n} segments the profile covers")
    order = np.empty(n, dtype=int)
    order[profile.sort_values("rank")["slot"].to_numpy()] = ranking
    return tuple(int(s) for s in order)


def apply_attnrank(prompt: SegmentedPrompt, profile: pd.DataFrame, ranking: Sequence[int] | None = None) -> SegmentedPrompt:
    """``prompt`` with its segments re-ordered by AttnRank (``attnrank_order``)."""
    if prompt.n_segments != len(profile):
        raise BadOptionError(f"the prompt has {prompt.n_segments} segments but the AttnRank profile {len(profile)} slots: "
                             "calibrate on prompts with as many segments")
    return prompt.permuted(attnrank_order(profile, ranking))
