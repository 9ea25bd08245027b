"""From the probe's long tables to the metric tables and the headline numbers (pure functions,
no model): every number comes from ``posbench.metrics`` (docs/position-bias-metrics.md).

Which variants each metric sees:

* the U curve, its shape and the invariance check read every variant. For mcq/judge with label
  rotations the items are regrouped by *label assignment* (which label stands before which
  content, ``meta_assignment``): the k variants of one assignment are pure permutations of the
  same segments, so an order-invariant model reads the same in all of them;
* permutation consistency is reported twice for mcq/judge: **labels fixed** (the contents
  shift under fixed A, B, ... as in Zheng et al. and the usual judge swap; a model with a
  preference for the token " A" fails it even if it ignores order) and **labels move** (the
  same labelled blocks in other slots; only position bias fails it);
* PriDe and RStd read the labels-fixed variants (the paper's protocol: IDs fixed, contents
  cyclically permuted); label- and slot-selection rates read every variant, where labels and
  slots are balanced against each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from posbench.errors import EmptyDataError
from posbench.metrics import (
    attention_profile,
    attention_shape,
    content_consistency,
    invariance_check,
    judge_metrics,
    predictions,
    pride,
    selection_rates,
    shape_summary,
    u_curve,
)

from .tasks import CHOICE, RETRIEVAL


# ---------------------------------------------------------------------------- views of the scores
def fixed_labels(scores: pd.DataFrame) -> pd.DataFrame:
    """The variants whose labels read A, B, ... top to bottom (mcq/judge)."""
    return scores[scores["meta_label_shift"] == 0]


def has_rotations(scores: pd.DataFrame) -> bool:
    return "meta_label_shift" in scores and scores["meta_label_shift"].nunique() > 1


def by_assignment(scores: pd.DataFrame) -> pd.DataFrame:
    """mcq/judge items regrouped as row x label assignment: the variants of one item are then
    pure permutations of the same labelled blocks."""
    return scores.assign(item_id=scores["item_id"] + "|a" + scores["meta_assignment"].astype(int).astype(str))


def permutation_view(scores: pd.DataFrame) -> pd.DataFrame:
    """Every task's scores with items whose variants are pure permutations of the segments:
    kv/mdqa as they are, mcq/judge by label assignment (only with label rotations)."""
    parts = [scores[scores["task"].isin(RETRIEVAL)]]
    choice = scores[scores["task"].isin(CHOICE)]
    if len(choice) and has_rotations(choice):
        parts.append(by_assignment(choice))
    return pd.concat(parts, ignore_index=True)


def _tasks(scores: pd.DataFrame, names) -> list[tuple[str, pd.DataFrame]]:
    return [(t, g) for t, g in scores.groupby("task", sort=False) if t in names]


# ---------------------------------------------------------------------------- tables
def consistency_table(scores: pd.DataFrame, normalise: bool) -> pd.DataFrame:
    """Permutation consistency per task x n_segments x protocol (see the module doc)."""
    parts = []
    for task, g in _tasks(scores, RETRIEVAL):
        parts.append(content_consistency(g, normalise=normalise).assign(protocol="gold moved, others in order"))
    for task, g in _tasks(scores, CHOICE):
        parts.append(content_consistency(fixed_labels(g), normalise=normalise).assign(protocol="labels fixed"))
        if has_rotations(g):
            parts.append(content_consistency(by_assignment(g), normalise=normalise).assign(protocol="labels move"))
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def selection_table(scores: pd.DataFrame, normalise: bool) -> pd.DataFrame:
    """mcq/judge: how often each label and each slot is chosen against how often it is gold."""
    parts = []
    for _, g in _tasks(scores, CHOICE):
        for column, by in (("meta_label", "label"), ("meta_slot", "slot")):
            rates = selection_rates(g, column, normalise=normalise).rename(columns={column: "value"})
            parts.append(rates.assign(by=by, value=rates["value"].astype(str)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def judge_table(scores: pd.DataFrame, normalise: bool) -> pd.DataFrame:
    """Judge order bias (PINE's swap protocol): labels fixed (the answers swap under "Response A"
    and "Response B"), and with label rotations the headers moving with the answers."""
    parts = []
    for _, g in _tasks(scores, ("judge",)):
        parts.append(judge_metrics(fixed_labels(g), normalise=normalise, slot="choice")["summary"].assign(protocol="labels fixed"))
        if has_rotations(g):
            parts.append(judge_metrics(by_assignment(g), normalise=normalise, slot="meta_slot")["summary"]
                         .assign(protocol="labels move"))
            parts.append(judge_metrics(g, normalise=normalise, slot="meta_slot")["summary"].assign(protocol="every variant"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def pride_tables(scores: pd.DataFrame, calib_frac: float, seed: int) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """PriDe on the labels-fixed mcq variants: the label prior, before/after accuracy and RStd."""
    mcq = scores[scores["task"] == "mcq"]
    if mcq.empty:
        return {}, []
    try:
        out = pride(fixed_labels(mcq), calib_frac=calib_frac, seed=seed)
    except EmptyDataError as err:
        return {}, [f"mcq: PriDe not computed ({err})"]
    return {"pride_prior": out["prior"], "pride": out["summary"], "label_recall": out["recall"]}, []


def lengths_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per task x n_segments: items, variants and prompt tokens (the context-length sweep's x)."""
    per_variant = scores.drop_duplicates(["task", "item_id", "variant"])
    return per_variant.groupby(["task", "n_segments"], sort=False).agg(
        n_items=("item_id", "nunique"), n_variants=("variant", "size"),
        prompt_tokens=("meta_prompt_tokens", "mean"), min_tokens=("meta_prompt_tokens", "min"),
        max_tokens=("meta_prompt_tokens", "max")).reset_index()


def attention_tables(attention: pd.DataFrame, n_boot: int, seed: int) -> dict[str, pd.DataFrame]:
    """The attention basin per task x n_segments: the mass profile by slot (every segment, and
    the gold segment alone) and its shape per layer."""
    profiles, shapes = [], []
    for (task, n), g in attention.groupby(["task", "n_segments"], sort=False):
        keys = {"task": task, "n_segments": n}
        profiles.append(attention_profile(g, n_boot=n_boot, seed=seed).assign(segments="all", **keys))
        gold = g[g["is_gold"]]
        if len(gold):
            profiles.append(attention_profile(gold, n_boot=n_boot, seed=seed).assign(segments="gold", **keys))
        shapes.append(attention_shape(g, n_boot=n_boot, seed=seed).assign(**keys))
    return {"attention_profile": pd.concat(profiles, ignore_index=True),
            "attention_shape": pd.concat(shapes, ignore_index=True)}


def attnrank_table(scores: pd.DataFrame, reordered: pd.DataFrame, held_out: dict, normalise: bool) -> pd.DataFrame:
    """AttnRank's effect on the held-out rows: accuracy and gold log-probability (renormalised
    over the choices) with the gold document in the most attended slot (``attnrank``), in the
    least attended one (``attnrank reversed``), first (``gold first``, the retrieval order), and
    averaged over the swept slots (``sweep mean``)."""
    rows = []
    for (task, n), items in held_out.items():
        sweep = predictions(scores[(scores["task"] == task) & (scores["n_segments"] == n)
                                   & scores["item_id"].isin(items)], normalise)
        per_item = sweep.groupby("item_id")[["correct", "gold_logp_norm"]].mean()
        rows.append({"task": task, "n_segments": n, "condition": "sweep mean", "gold_slot": np.nan,
                     "n_items": len(per_item), "accuracy": per_item["correct"].mean(),
                     "gold_logp_norm": per_item["gold_logp_norm"].mean()})
        mine = reordered[(reordered["task"] == task) & (reordered["n_segments"] == n)]
        for condition, g in mine.groupby("variant", sort=False):
            pred = predictions(g, normalise)
            rows.append({"task": task, "n_segments": n, "condition": condition,
                         "gold_slot": float(pred["gold_slot"].iloc[0]), "n_items": len(pred),
                         "accuracy": pred["correct"].mean(), "gold_logp_norm": pred["gold_logp_norm"].mean()})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- headline numbers
def _r(x: Any, digits: int = 4) -> Any:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), digits)


def summary(tables: dict[str, pd.DataFrame], normalise: bool) -> dict[str, Any]:
    """Flat headline numbers, ``task[.nN].measure``. Shapes use the gold log-probability
    renormalised over the choices (smooth even where accuracy is near chance)."""
    out: dict[str, Any] = {}
    scores = tables["scores"]
    preds = predictions(scores, normalise)
    for (task, n), g in preds.groupby(["task", "n_segments"], sort=False):
        key = f"{task}.n{n}" if task in RETRIEVAL else task
        out[f"{key}.accuracy"] = _r(g["correct"].mean())
        out[f"{key}.gold_logp_norm"] = _r(g["gold_logp_norm"].mean())
        shape = tables["shape"]
        shape = shape[(shape["task"] == task) & (shape["n_segments"] == n) & (shape["metric"] == "gold_logp_norm")]
        if task in RETRIEVAL:
            for stat in ("primacy", "recency", "middle_dip", "worst_slot"):
                value = shape.loc[shape["stat"] == stat, "value"]
                out[f"{key}.{stat}"] = _r(value.iloc[0]) if len(value) else None
        else:
            spread = shape.loc[shape["stat"] == "spread", "value"]
            out[f"{key}.slot_spread"] = _r(spread.iloc[0]) if len(spread) else None
    cons = tables.get("consistency")
    if cons is not None and len(cons):
        for _, r in cons.iterrows():
            key = f"{r['task']}.n{r['n_segments']}" if r["task"] in RETRIEVAL else r["task"]
            tag = {"labels fixed": "consistency_labels_fixed", "labels move": "consistency_labels_move"}.get(
                r["protocol"], "consistency")
            out[f"{key}.{tag}"] = _r(r["consistency"])
    sel = tables.get("selection")
    if sel is not None and len(sel):
        for (task, by), g in sel.groupby(["task", "by"], sort=False):
            top = g.loc[g["rate"].idxmax()]
            out[f"{task}.most_chosen_{by}"] = f"{top['value']} ({top['rate']:.2f}, gold {top['gold_rate']:.2f})"
    if "pride" in tables:
        p = tables["pride"].iloc[0]
        out["mcq.rstd"] = _r(p["rstd_before"], 2)
        out["mcq.accuracy_pride_heldout"] = f"{p['acc_before']:.3f} -> {p['acc_after']:.3f}"
        prior = tables["pride_prior"]
        out["mcq.pride_prior"] = " ".join(f"{label}={v:.2f}" for label, v in zip(prior["meta_label"], prior["prior"]))
    if "judge" in tables:
        for _, r in tables["judge"].iterrows():
            if r["protocol"] == "labels fixed":
                out["judge.flip_rate"] = _r(r["flip_rate"])
                out["judge.first_slot_rate"] = _r(r["first_slot_rate"])
            elif r["protocol"] == "labels move":
                out["judge.flip_rate_labels_move"] = _r(r["flip_rate"])
            else:
                out["judge.first_slot_rate_all_labels"] = _r(r["first_slot_rate"])
    if "attention_shape" in tables:
        for (task, n), g in tables["attention_shape"].groupby(["task", "n_segments"], sort=False):
            if task not in RETRIEVAL:
                continue
            wide = g.pivot(index="layer", columns="stat", values="value")
            basin = ((wide["primacy"] > 0) & (wide["recency"] > 0)).sum()
            out[f"{task}.n{n}.basin_layers"] = f"{int(basin)} of {len(wide)}"
    if "attnrank" in tables:
        for (task, n), g in tables["attnrank"].groupby(["task", "n_segments"], sort=False):
            acc = dict(zip(g["condition"], g["accuracy"]))
            lp = dict(zip(g["condition"], g["gold_logp_norm"]))
            top = g.loc[g["condition"] == "attnrank", "gold_slot"]
            out[f"{task}.n{n}.attnrank_slot"] = int(top.iloc[0]) if len(top) else None
            out[f"{task}.n{n}.attnrank_acc"] = " / ".join(
                f"{c} {acc[c]:.2f}" for c in ("attnrank", "sweep mean", "attnrank reversed") if c in acc)
            out[f"{task}.n{n}.attnrank_logp"] = " / ".join(
                f"{c} {lp[c]:.2f}" for c in ("attnrank", "sweep mean", "attnrank reversed") if c in lp)
    return out


def analyse(scores: pd.DataFrame, attention: pd.DataFrame | None, *, normalise: bool, n_boot: int, seed: int,
            pride_calib_frac: float) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Every metric table of a run (tables with no rows are left out) and notes on what could
    not be computed."""
    tables: dict[str, pd.DataFrame] = {"scores": scores}
    tables["u_curve"] = u_curve(scores, normalise=normalise, n_boot=n_boot, seed=seed)
    tables["shape"] = shape_summary(scores, normalise=normalise, n_boot=n_boot, seed=seed)
    tables["consistency"] = consistency_table(scores, normalise)
    tables["selection"] = selection_table(scores, normalise)
    view = permutation_view(scores)
    if len(view):
        tables["invariance"] = invariance_check(view, normalise=normalise, atol=1e-6)
    pride_out, notes = pride_tables(scores, pride_calib_frac, seed)
    tables.update(pride_out)
    tables["judge"] = judge_table(scores, normalise)
    tables["lengths"] = lengths_table(scores)
    if attention is not None and len(attention):
        tables["attention"] = attention
        tables.update(attention_tables(attention, n_boot, seed))
    return {k: v for k, v in tables.items() if len(v)}, notes
