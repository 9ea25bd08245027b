"""Choice-order bias: multiple-choice selection bias (PriDe) and LM-as-judge order bias.

MCQ: Zheng et al., "Large Language Models Are Not Robust Multiple Choice Selectors", ICLR 2024
(code: chujiezheng/LLM-MCQ-Bias). Judge: the swap protocol of PINE (Wang et al., "Eliminating
Position Bias of Language Models: A Mechanistic Approach", ICLR 2025). Definitions:
docs/position-bias-metrics.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from posbench.errors import EmptyDataError, MalformedDataError

from .position_bias import item_consistency
from .scores import SCORE_COLUMNS, log_softmax_over_choices, predictions, require_columns

GROUP = ["task", "n_segments"]


def selection_rates(scores: pd.DataFrame, by: str = "choice", *, normalise: bool = False) -> pd.DataFrame:
    """How often each value of a per-choice column is chosen, against how often it is gold.

    ``by`` is any per-choice column: ``choice`` (the label index; with fixed labels it is also
    the slot), ``meta_label`` (label-token bias) or ``meta_slot`` (position bias) when a probe
    varies the labels. One row per task x n_segments x value of ``by``: ``n_chosen, n_gold,
    n_verdicts, rate = n_chosen / n_verdicts, gold_rate = n_gold / n_verdicts`` (an unbiased
    model's rate tracks gold_rate; 1/K under balanced cyclic shifts).
    """
    require_columns(scores, [by], "scores")
    preds = predictions(scores, normalise)
    gold = scores.loc[scores["is_gold"].astype(bool)]
    values = scores[[*GROUP, by]].drop_duplicates().set_index([*GROUP, by]).index
    out = pd.DataFrame({
        "n_chosen": preds.groupby([*GROUP, by]).size().reindex(values, fill_value=0),
        "n_gold": gold.groupby([*GROUP, by]).size().reindex(values, fill_value=0),
    }).sort_index()
    total = preds.groupby(GROUP).size().rename("n_verdicts")
    out = out.join(total, on=GROUP)
    return out.assign(rate=out["n_chosen"] / out["n_verdicts"], gold_rate=out["n_gold"] / out["n_verdicts"]).reset_index()


def _recalls(preds: pd.DataFrame) -> pd.DataFrame:
    """Per task x n_segments x gold_choice: ``n`` verdicts whose gold is that choice, ``recall``."""
    return preds.groupby([*GROUP, "gold_choice"], sort=True).agg(n=("correct", "size"), recall=("correct", "mean")).reset_index()


def _rstd(recalls: pd.DataFrame) -> pd.Series:
    """RStd per task x n_segments: population std (ddof 0) over labels of recall, in %."""
    return recalls.groupby(GROUP, sort=True)["recall"].agg(lambda r: float(np.std(r.to_numpy() * 100)))


def label_recall(scores: pd.DataFrame, *, normalise: bool = False) -> pd.DataFrame:
    """Per-label recall (Zheng et al., ICLR 2024): for each gold label (``gold_choice``), the share
    of its verdicts that are correct. One row per task x n_segments x gold_choice: ``n, recall``."""
    return _recalls(predictions(scores, normalise))


def rstd(scores: pd.DataFrame, *, normalise: bool = False) -> pd.DataFrame:
    """RStd (Zheng et al., ICLR 2024): the standard deviation over labels of per-label recall, in %
    (numpy ``std``, ddof 0, as the authors' code). 0 = every label recalled equally often.
    One row per task x n_segments: ``rstd``."""
    return _rstd(label_recall(scores, normalise=normalise)).rename("rstd").reset_index()


def pride(
    scores: pd.DataFrame,
    *,
    calib_frac: float = 0.05,
    seed: int = 0,
    calib_items=None,
    eval_variant=None,
) -> dict[str, pd.DataFrame]:
    """PriDe debiasing (Zheng et al., ICLR 2024): estimate the model's prior over option IDs on a
    few items seen under every cyclic permutation of the contents (IDs fixed), then remove it.

    Per task x n_segments, with ``log P_obs`` = log softmax over the choices' ``logprob`` (the
    renormalised option-ID probabilities) of one item x variant:

    1. calibration items: ``calib_items``, else ``max(1, floor(calib_frac * n_items))`` item_ids
       drawn without replacement by ``numpy.random.default_rng(seed)`` from the sorted ids;
    2. per calibration item, ``prior_item = softmax_ID(mean over its variants of log P_obs(ID))``;
       ``prior`` = the mean of ``prior_item`` over calibration items;
    3. the other items (every variant, or only ``variant == eval_variant``; the paper's code uses
       the original order only): debiased prediction = ``argmax_ID(log P_obs(ID) - log prior(ID))``.

    Returns ``{"prior": task, n_segments, choice, [meta_label], prior;
    "summary": task, n_segments, n_calib_items, n_eval_items, n_eval, acc_before, acc_after,
    rstd_before, rstd_after; "recall": task, n_segments, gold_choice, n, recall_before,
    recall_after}``, accuracies and recalls over the same evaluated rows before and after.
    """
    require_columns(scores, SCORE_COLUMNS, "scores")
    priors, summaries, recalls = [], [], []
    for keys, g in scores.groupby(GROUP, sort=True):
        g = g.assign(log_obs=log_softmax_over_choices(g, g["logprob"].astype(float)))
        items = np.sort(g["item_id"].unique())
        if calib_items is None:
            calib = np.random.default_rng(seed).choice(items, size=max(1, int(len(items) * calib_frac)), replace=False)
        else:
            calib = np.asarray(list(calib_items))
        in_calib = g["item_id"].isin(calib)
        if in_calib.all() or not in_calib.any():
            raise EmptyDataError(f"{dict(zip(GROUP, keys))}: PriDe needs both calibration and held-out items "
                                 f"({in_calib.sum()} of {len(g)} rows are calibration); change calib_frac or calib_items")

        mean_log = g[in_calib].groupby(["item_id", "choice"])["log_obs"].mean().unstack("choice")
        if mean_log.isna().any().any():
            raise MalformedDataError(f"{dict(zip(GROUP, keys))}: every calibration item needs every choice in every variant")
        item_prior = np.exp(mean_log.to_numpy() - mean_log.to_numpy().max(axis=1, keepdims=True))
        item_prior /= item_prior.sum(axis=1, keepdims=True)  # softmax over IDs, per item
        prior = pd.Series(item_prior.mean(axis=0), index=mean_log.columns, name="prior")

        held = g[~in_calib]
        if eval_variant is not None:
            held = held[held["variant"] == eval_variant]
        if held.empty:
            raise EmptyDataError(f"{dict(zip(GROUP, keys))}: no held-out rows with variant == {eval_variant!r}")
        before = predictions(held)
        after = predictions(held.assign(logprob=held["log_obs"] - np.log(prior.reindex(held["choice"]).to_numpy())))
        rec = _recalls(before).merge(_recalls(after), on=[*GROUP, "gold_choice", "n"], suffixes=("_before", "_after"))

        prior_table = prior.reset_index().assign(**dict(zip(GROUP, keys)))
        if "meta_label" in g.columns:
            prior_table["meta_label"] = prior_table["choice"].map(g.drop_duplicates("choice").set_index("choice")["meta_label"])
        priors.append(prior_table)
        recalls.append(rec)
        summaries.append({
            **dict(zip(GROUP, keys)),
            "n_calib_items": int(mean_log.shape[0]),
            "n_eval_items": int(held["item_id"].nunique()),
            "n_eval": len(before),
            "acc_before": float(before["correct"].mean()),
            "acc_after": float(after["correct"].mean()),
            "rstd_before": float(_rstd(_recalls(before)).iloc[0]),
            "rstd_after": float(_rstd(_recalls(after)).iloc[0]),
        })
    prior_cols = [*GROUP, "choice", *(["meta_label"] if "meta_label" in scores.columns else []), "prior"]
    return {
        "prior": pd.concat(priors, ignore_index=True)[prior_cols],
        "summary": pd.DataFrame(summaries),
        "recall": pd.concat(recalls, ignore_index=True),
    }


def judge_metrics(scores: pd.DataFrame, *, normalise: bool = False, slot: str = "choice") -> dict[str, pd.DataFrame]:
    """LM-as-judge order bias under swapping the answers (PINE, Wang et al., ICLR 2025).

    ``slot`` names the per-choice column holding the slot of the answer a verdict picks:
    ``choice`` when verdict i means "the answer in slot i" (fixed labels), else ``meta_slot``.
    Needs ``meta_content`` (which answer a verdict points to). Returns
    ``{"summary": task, n_segments, n_items, n_verdicts, flip_rate, first_slot_rate, accuracy,
    consistent_correct; "by_order": task, n_segments, variant, n_verdicts, accuracy,
    first_slot_rate}``:

    - flip_rate: share of items (seen in >= 2 orders) whose chosen content changes with the order;
    - first_slot_rate: share of all verdicts choosing slot 0 (0.5 = unbiased with two answers);
    - accuracy: share of correct verdicts, per order and overall (overall = the expected accuracy
      under PINE's random order when every item has both orders);
    - consistent_correct: share of items (>= 2 orders) correct in every order.
    """
    require_columns(scores, [slot, "meta_content"], "scores")
    preds = predictions(scores, normalise)
    preds = preds.assign(first_slot=preds[slot] == 0)
    per_item = item_consistency(preds).groupby(GROUP, sort=True).agg(
        n_items=("item_id", "size"),
        flip_rate=("consistent", lambda c: 1 - c.mean()),
        consistent_correct=("all_correct", "mean"),
    )
    overall = preds.groupby(GROUP, sort=True).agg(
        n_verdicts=("correct", "size"), first_slot_rate=("first_slot", "mean"), accuracy=("correct", "mean"))
    summary = overall.join(per_item, how="left")
    by_order = preds.groupby([*GROUP, "variant"], sort=True).agg(
        n_verdicts=("correct", "size"), accuracy=("correct", "mean"), first_slot_rate=("first_slot", "mean"))
    columns = ["n_items", "n_verdicts", "flip_rate", "first_slot_rate", "accuracy", "consistent_correct"]
    return {"summary": summary[columns].reset_index(), "by_order": by_order.reset_index()}
