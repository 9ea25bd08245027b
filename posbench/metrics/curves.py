"""Curves over slots with item-bootstrap confidence intervals, and their shape in numbers.

Shared by the U curve (accuracy / gold log-probability by gold slot) and the attention-basin
profile (attention mass by slot): both are "one value per item per slot, averaged over items".

Bootstrap: within each group, items (sorted ``item_id``) are resampled with replacement,
``rng.integers(0, n_items, (n_boot, n_items))`` with ``rng = np.random.default_rng(seed)``
created afresh per group; a resample's curve is the mean over its drawn items (with
multiplicity) of the item-level values, slot by slot. The interval is the **percentile**
interval of the resampled statistic, the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles.
Every curve point and shape statistic of a group uses the same resamples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

SHAPE_STATS = ("primacy", "recency", "middle_dip", "worst_slot", "spread")


@dataclass(frozen=True)
class SlotCurves:
    """The curves of one group: ``point[v]`` is [n_slots], ``boot[v]`` is [n_boot, n_slots]
    (absent when ``n_boot == 0``); ``slots`` are the measured slots, ascending."""

    keys: dict
    slots: np.ndarray
    n_segments: int
    n_items: np.ndarray
    point: dict[str, np.ndarray]
    boot: dict[str, np.ndarray]


def _quiet(fn, *args, **kwargs):
    """numpy's nan-reductions warn on all-NaN slices; here those are legitimately NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def resample_weights(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_items] multiplicity of each item in each resample (items drawn with replacement)."""
    draws = np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))
    flat = (draws + n_items * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_items).reshape(n_boot, n_items).astype(float)


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Column means of ``values`` [n_items, n_slots] (NaN = not seen) under each row of ``weights``."""
    seen = ~np.isnan(values)
    return _quiet(np.divide, weights @ np.where(seen, values, 0.0), weights @ seen)


def interval(boot: np.ndarray | None, ci: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 of ``boot``; NaN when there is no bootstrap."""
    if boot is None:
        return np.full(width, np.nan), np.full(width, np.nan)
    lo, hi = _quiet(np.nanquantile, boot, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return lo, hi


def slot_curves(
    frame: pd.DataFrame, *, values: Sequence[str], slot: str, group: Sequence[str], n_boot: int, seed: int
) -> list[SlotCurves]:
    """Per group: the mean over items of each ``values`` column by ``slot``, plus bootstrap curves.

    An item seen several times at a slot (several variants) is averaged there first, so every
    item weighs the same. Rows without a slot are dropped. ``n_segments`` is the group's
    ``n_segments`` key when grouped by it, else max slot + 1.
    """
    frame = frame.dropna(subset=[slot])
    group = list(group)
    out = []
    for keys, g in frame.groupby(group, sort=True):
        keys = dict(zip(group, keys))
        per_item = g.groupby(["item_id", slot], sort=True)[list(values)].mean().unstack(slot)
        mats = {v: per_item[v].to_numpy(float) for v in values}
        slots = per_item[values[0]].columns.to_numpy()
        if np.issubdtype(slots.dtype, np.floating) and np.all(slots == np.round(slots)):
            slots = slots.astype(int)  # a gold_slot column made float by missing values
        n_segments = int(keys["n_segments"]) if "n_segments" in keys else int(slots.max()) + 1
        weights = resample_weights(len(per_item), n_boot, seed) if n_boot > 0 else None
        out.append(SlotCurves(
            keys=keys,
            slots=slots,
            n_segments=n_segments,
            n_items=(~np.isnan(mats[values[0]])).sum(axis=0),
            point={v: _quiet(np.nanmean, m, axis=0) for v, m in mats.items()},
            boot={} if weights is None else {v: weighted_means(m, weights) for v, m in mats.items()},
        ))
    return out


def shape_stats(curves: np.ndarray, slots: np.ndarray, n_segments: int) -> dict[str, np.ndarray]:
    """Shape of each row of ``curves`` [B, n_slots] over ``slots`` out of ``n_segments``.

    first = value at slot 0, last = value at slot n_segments - 1 (NaN if not measured),
    interior = the measured slots strictly between them.

    - primacy    = first - mean(interior)
    - recency    = last - mean(interior)
    - middle_dip = (first + last) / 2 - min(interior)
    - worst_slot = the slot with the lowest value (ties: the earliest)
    - spread     = max - min over all measured slots

    primacy, recency and middle_dip are NaN when there is no interior (n_segments <= 2).
    """
    curves = np.atleast_2d(np.asarray(curves, float))
    rows = curves.shape[0]

    def at(s: int) -> np.ndarray:
        hit = np.flatnonzero(slots == s)
        return curves[:, hit[0]] if hit.size else np.full(rows, np.nan)

    first, last = at(0), at(n_segments - 1)
    interior = curves[:, (slots > 0) & (slots < n_segments - 1)]
    if interior.shape[1]:
        middle, low = _quiet(np.nanmean, interior, axis=1), _quiet(np.nanmin, interior, axis=1)
    else:
        middle = low = np.full(rows, np.nan)
    missing = np.isnan(curves)
    worst = slots[np.argmin(np.where(missing, np.inf, curves), axis=1)].astype(float)
    return {
        "primacy": first - middle,
        "recency": last - middle,
        "middle_dip": (first + last) / 2 - low,
        "worst_slot": np.where(missing.all(axis=1), np.nan, worst),
        "spread": _quiet(np.nanmax, curves, axis=1) - _quiet(np.nanmin, curves, axis=1),
    }


def curve_table(curves: list[SlotCurves], slot: str, names: Mapping[str, tuple[str, str, str]], ci: float) -> pd.DataFrame:
    """Tidy table, one row per group x slot: the group keys, ``slot``, then for each value column
    ``v`` the columns ``names[v] = (mean, lo, hi)``, then ``n_items``."""
    parts = []
    for c in curves:
        cols = {k: np.repeat(val, len(c.slots)) for k, val in c.keys.items()} | {slot: c.slots}
        for v, (mean, lo, hi) in names.items():
            cols[mean] = c.point[v]
            cols[lo], cols[hi] = interval(c.boot.get(v), ci, len(c.slots))
        cols["n_items"] = c.n_items
        parts.append(pd.DataFrame(cols))
    return pd.concat(parts, ignore_index=True)


def shape_table(curves: list[SlotCurves], metrics: Mapping[str, str], ci: float) -> pd.DataFrame:
    """Tidy table, one row per group x metric x statistic: the group keys, ``metric``
    (``metrics[v]`` for value column ``v``), ``stat`` (SHAPE_STATS), ``value``, ``lo``, ``hi``.
    ``worst_slot`` gets no interval (lo = hi = NaN): a slot index has no useful percentile CI."""
    rows = []
    for c in curves:
        for v, metric in metrics.items():
            point = shape_stats(c.point[v], c.slots, c.n_segments)
            boot = shape_stats(c.boot[v], c.slots, c.n_segments) if v in c.boot else {}
            for stat in SHAPE_STATS:
                resampled = boot.get(stat) if stat != "worst_slot" else None
                lo, hi = interval(None if resampled is None else resampled[:, None], ci, 1)
                rows.append({**c.keys, "metric": metric, "stat": stat, "value": point[stat][0], "lo": lo[0], "hi": hi[0]})
    return pd.DataFrame(rows)
