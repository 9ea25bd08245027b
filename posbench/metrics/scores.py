"""The scores table every position-bias metric reads, and the per-variant predictions made from it.

``scores`` is tidy, one row per item x variant x choice:

    task        kv | mdqa | mcq | judge
    item_id     the underlying question (the same across its variants)
    variant     the condition: gold slot, cyclic shift, answer order, ...
    n_segments  segments in the prompt
    gold_slot   slot of the segment that holds the gold information (NaN: none does)
    choice      index of the scored continuation (option label, judge verdict, candidate answer)
    logprob     total log-likelihood of the continuation
    n_tokens    tokens in the continuation
    is_gold     whether this choice is the correct one (exactly one per item x variant)
    meta_*      free columns, per variant (meta_shift) or per choice (meta_content: which
                underlying content/option the choice points to in this variant; meta_label;
                meta_slot: the slot that content sits in)
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from posbench.errors import EmptyDataError, MalformedDataError

KEYS = ["task", "item_id", "variant"]
SCORE_COLUMNS = [*KEYS, "n_segments", "gold_slot", "choice", "logprob", "n_tokens", "is_gold"]
_PER_CHOICE = ["logprob", "n_tokens", "is_gold"]


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise a one-line, actionable error when ``frame`` is empty or lacks ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MalformedDataError(f"{what} lacks column(s) {missing}: it has {list(frame.columns)}")
    if frame.empty:
        raise EmptyDataError(f"{what} is empty: pass at least one row")


def choice_score(scores: pd.DataFrame, normalise: bool = False) -> pd.Series:
    """The score a choice is ranked by: ``logprob``, or ``logprob / n_tokens`` when normalising."""
    return scores["logprob"] / scores["n_tokens"] if normalise else scores["logprob"].astype(float)


def log_softmax_over_choices(frame: pd.DataFrame, score: pd.Series) -> pd.Series:
    """``score`` renormalised over the choices of each item x variant: score - logsumexp(scores)."""
    keys = [frame[k] for k in KEYS]
    best = score.groupby(keys, sort=False).transform("max")
    return score - best - np.log(np.exp(score - best).groupby(keys, sort=False).transform("sum"))


def predictions(scores: pd.DataFrame, normalise: bool = False) -> pd.DataFrame:
    """One row per task x item x variant: what the model picks among the choices, and how surely.

    The prediction is ``argmax`` of the choice score (``logprob``, or ``logprob / n_tokens``
    with ``normalise=True``); ties go to the lowest choice index, and a tie with gold is never
    correct (not even when gold is that lowest index). Columns:

    - ``task, item_id, variant, n_segments, gold_slot``
    - ``choice``: the predicted choice; ``gold_choice``; ``correct``
    - ``gold_logprob``: the gold choice's score (per token when normalising)
    - ``gold_logp_norm``: log-probability of gold renormalised over the choices,
      ``score_gold - logsumexp(scores)`` (log softmax over the choices)
    - ``margin``: ``score_gold - max(score of the other choices)``; > 0 iff correct without a tie,
      NaN with a single choice
    - every other column of ``scores`` (``meta_*``...), taken from the **predicted** choice's
      row: per-variant columns are unchanged, per-choice ones (``meta_content``, ``meta_label``,
      ``meta_slot``) describe what was chosen.
    """
    require_columns(scores, SCORE_COLUMNS, "scores")
    df = scores.sort_values([*KEYS, "choice"], kind="stable").reset_index(drop=True)
    df["is_gold"] = df["is_gold"].astype(bool)
    df["_score"] = choice_score(df, normalise)
    if df["_score"].isna().any():
        bad = df.loc[df["_score"].isna(), KEYS].drop_duplicates().head(3).to_dict("records")
        raise MalformedDataError(f"logprob (or n_tokens) is missing for some choices, e.g. {bad}: score every choice")
    grouped = df.groupby(KEYS, sort=False)

    n_gold = grouped["is_gold"].transform("sum")
    if (n_gold != 1).any():
        bad = df.loc[n_gold != 1, KEYS].drop_duplicates().head(3).to_dict("records")
        raise MalformedDataError(f"every item x variant needs exactly one is_gold choice; these do not: {bad}")

    df["_logp_norm"] = log_softmax_over_choices(df, df["_score"])

    pred = df.loc[grouped["_score"].idxmax().to_numpy()].set_index(KEYS)
    gold = df.loc[df["is_gold"]].set_index(KEYS)
    best_other = df.loc[~df["is_gold"]].groupby(KEYS, sort=False)["_score"].max()

    out = pred.drop(columns=[*_PER_CHOICE, "_score", "_logp_norm"])
    out["gold_choice"] = gold["choice"]
    out["gold_logprob"] = gold["_score"]
    out["gold_logp_norm"] = gold["_logp_norm"]
    out["margin"] = gold["_score"] - best_other.reindex(out.index)
    # a tie with gold is wrong even when gold has the lowest index (NaN margin: a single choice)
    out["correct"] = (out["choice"] == out["gold_choice"]) & ~(out["margin"] <= 0)
    first = ["n_segments", "gold_slot", "choice", "gold_choice", "correct", "gold_logprob", "gold_logp_norm", "margin"]
    return out[first + [c for c in out.columns if c not in first]].reset_index()
