"""Position-bias metrics on tables small enough to compute by hand (the arithmetic is in the
comments), plus toy scorers: one that ignores order (every metric must read "no bias") and one
that adds a known bonus to a slot or a label (every metric must read exactly that bias)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from posbench.data.segments import SegmentedPrompt
from posbench.errors import EmptyDataError, MalformedDataError
from posbench.metrics import (
    apply_attnrank,
    attention_profile,
    attention_shape,
    attnrank_order,
    attnrank_profile,
    content_consistency,
    invariance_check,
    judge_metrics,
    label_recall,
    length_sweep,
    predictions,
    pride,
    rstd,
    selection_rates,
    shape_stats,
    shape_summary,
    u_curve,
)

# --------------------------------------------------------------------------------------------
# Toy scorers. A variant is a list of (choice, content, slot) for its choices; content 0 is gold.
# logprob(choice) = utility[item][content] + slot_bias * [slot == 0] + label_bias[label]


def toy_scores(task, variants, utility, *, slot_bias=0.0, label_bias=None, labels=None, extra=None):
    """The probe's scores table for items scored by a toy model that sees only contents, plus
    optional bonuses on slot 0 or on label tokens (the biases under test)."""
    rows = []
    for item, util in enumerate(utility):
        for variant, choices in variants.items():
            gold_slot = next(slot for _, content, slot in choices if content == 0)
            for choice, content, slot in choices:
                label = labels[variant][choice] if labels else "ABCDEFGHIJ"[choice]
                bonus = slot_bias * (slot == 0) + (label_bias or {}).get(label, 0.0)
                rows.append({
                    "task": task, "item_id": f"q{item}", "variant": variant, "n_segments": len(choices),
                    "gold_slot": gold_slot, "choice": choice, "logprob": float(util[content]) + bonus,
                    "n_tokens": 1, "is_gold": content == 0, "meta_content": content, "meta_slot": slot,
                    "meta_label": label, **(extra or {}),
                })
    return pd.DataFrame(rows)


def retrieval_variants(n):
    """kv / mdqa: variant g moves the gold content to slot g, distractors 1..n-1 fill the other
    slots in order; choice j is content j's answer."""
    out = {}
    for g in range(n):
        slots = [s for s in range(n) if s != g]
        out[g] = [(0, 0, g)] + [(j, j, slots[j - 1]) for j in range(1, n)]
    return out


def cyclic_variants(k):
    """mcq: shift s puts content (i + s) % k behind label i (labels fixed, label i in slot i)."""
    return {s: [(i, (i + s) % k, i) for i in range(k)] for s in range(k)}


def judge_variants():
    """judge: the better answer (content 0) first, then swapped; verdict i = the answer in slot i."""
    return {"01": [(0, 0, 0), (1, 1, 1)], "10": [(0, 1, 0), (1, 0, 1)]}


def explicit(task, cells, n_choices=2):
    """Items x variants where the gold choice is 0 with logprob L and the other choices score
    L - 1 (correct) or L + 1 (wrong): ``cells[(item, variant)] = (gold_slot, correct, L)``."""
    rows = []
    for (item, variant), (gold_slot, correct, lp) in cells.items():
        for choice in range(n_choices):
            rows.append({
                "task": task, "item_id": item, "variant": variant, "n_segments": n_choices, "gold_slot": gold_slot,
                "choice": choice, "logprob": lp if choice == 0 else lp + (-1.0 if correct else 1.0),
                "n_tokens": 1, "is_gold": choice == 0,
            })
    return pd.DataFrame(rows)


def row(frame, **where):
    mask = np.ones(len(frame), bool)
    for k, v in where.items():
        mask &= frame[k].to_numpy() == v
    assert mask.sum() == 1, where
    return frame[mask].iloc[0]


# --------------------------------------------------------------------------------------------
# predictions


def one_variant(logprobs, n_tokens, gold):
    return pd.DataFrame({
        "task": "kv", "item_id": "q", "variant": 0, "n_segments": 3, "gold_slot": 1, "choice": [0, 1, 2],
        "logprob": logprobs, "n_tokens": n_tokens, "is_gold": [c == gold for c in range(3)], "meta_content": [7, 8, 9],
    })


def test_predictions_by_hand():
    scores = one_variant([-1.0, -2.0, -3.0], [1, 4, 1], gold=1)
    raw = predictions(scores).iloc[0]
    # argmax(-1, -2, -3) = choice 0; gold is 1 -> wrong; margin = -2 - max(-1, -3) = -1
    assert (raw["choice"], raw["gold_choice"], bool(raw["correct"])) == (0, 1, False)
    assert raw["gold_logprob"] == -2.0 and raw["margin"] == -1.0
    # log softmax: -2 - log(e^-1 + e^-2 + e^-3) = -2 - (-1 + log(1 + e^-1 + e^-2)) = -1 - 0.407606 = -1.407606
    assert raw["gold_logp_norm"] == pytest.approx(-1.407606, abs=1e-6)
    assert raw["meta_content"] == 7  # per-choice meta columns describe the predicted choice

    norm = predictions(scores, normalise=True).iloc[0]
    # per token: (-1, -0.5, -3) -> choice 1 = gold; margin = -0.5 - (-1) = 0.5
    assert (norm["choice"], bool(norm["correct"]), norm["gold_logprob"], norm["margin"]) == (1, True, -0.5, 0.5)
    # -0.5 - log(e^-1 + e^-0.5 + e^-3) = -0.5 - log(0.367879 + 0.606531 + 0.049787) = -0.5 - 0.023909
    assert norm["gold_logp_norm"] == pytest.approx(-0.523909, abs=1e-6)


def test_predictions_ties_go_to_the_lowest_choice():
    pred = predictions(one_variant([-1.0, -1.0, -3.0], [1, 1, 1], gold=1)).iloc[0]
    assert pred["choice"] == 0 and not pred["correct"] and pred["margin"] == 0.0


def test_a_tie_with_gold_is_wrong_even_when_gold_is_the_lowest_choice():
    """Bug fix: argmax picks choice 0 on a tie, which used to count as correct when gold was 0,
    so a model scoring every label alike read 100% accuracy on gold slot 0 and 0% elsewhere."""
    pred = predictions(one_variant([-1.0, -1.0, -3.0], [1, 1, 1], gold=0)).iloc[0]
    assert pred["choice"] == 0 and not pred["correct"] and pred["margin"] == 0.0
    one = one_variant([-2.0, -1.0, -3.0], [1, 1, 1], gold=0).head(1)  # a single choice: no rival, correct
    single = predictions(one).iloc[0]
    assert bool(single["correct"]) and np.isnan(single["margin"])


def test_predictions_reject_bad_tables():
    scores = one_variant([-1.0, -2.0, -3.0], [1, 1, 1], gold=1)
    with pytest.raises(MalformedDataError, match="exactly one is_gold"):
        predictions(scores.assign(is_gold=True))
    with pytest.raises(MalformedDataError, match="logprob"):
        predictions(scores.drop(columns="logprob"))
    with pytest.raises(EmptyDataError):
        predictions(scores.iloc[:0])
    with pytest.raises(MalformedDataError, match="missing"):
        predictions(scores.assign(logprob=[-1.0, np.nan, -3.0]))


# --------------------------------------------------------------------------------------------
# U curve and its shape

# Three items x three gold slots; (correct, gold logprob L):
#        slot 0      slot 1      slot 2
#   q0   (1, -1)     (0, -2)     (1, -1)
#   q1   (1, -1)     (1, -1)     (1, -1)
#   q2   (0, -3)     (0, -3)     (1, -1)
GRID = {
    "q0": [(1, -1.0), (0, -2.0), (1, -1.0)],
    "q1": [(1, -1.0), (1, -1.0), (1, -1.0)],
    "q2": [(0, -3.0), (0, -3.0), (1, -1.0)],
}
U_SCORES = explicit("kv", {(q, s): (s, bool(c), lp) for q, cells in GRID.items() for s, (c, lp) in enumerate(cells)}, 3)


def test_u_curve_by_hand():
    curve = u_curve(U_SCORES, n_boot=0)
    # accuracy by slot: (1+1+0)/3, (0+1+0)/3, 3/3; gold logprob: (-1-1-3)/3, (-2-1-3)/3, -1
    assert curve["accuracy"].tolist() == pytest.approx([2 / 3, 1 / 3, 1.0])
    assert curve["gold_logprob"].tolist() == pytest.approx([-5 / 3, -2.0, -1.0])
    # gold log-softmax over 3 choices: correct cells L - log(e^L + 2e^(L-1)) = -log(1 + 2/e) = -0.551445,
    # wrong cells -log(1 + 2e) = -1.861995; slot 0: (2 * -0.551445 - 1.861995) / 3 = -0.988295
    assert curve["gold_logp_norm"].iloc[0] == pytest.approx(-0.988295, abs=1e-6)
    assert curve["n_items"].tolist() == [3, 3, 3]
    assert curve[["acc_lo", "acc_hi", "lp_lo", "lp_hi"]].isna().all().all()


def test_u_curve_bootstrap_is_the_documented_item_resample():
    curve = u_curve(U_SCORES, n_boot=1, seed=3)
    # one resample: item rows drawn by default_rng(3).integers(0, 3, (1, 3)), items in sorted order
    draw = np.random.default_rng(3).integers(0, 3, size=(1, 3))[0]
    correct = np.array([[c for c, _ in GRID[q]] for q in sorted(GRID)], float)
    assert curve["acc_lo"].tolist() == pytest.approx(correct[draw].mean(axis=0).tolist())
    assert curve["acc_hi"].tolist() == pytest.approx(correct[draw].mean(axis=0).tolist())


def test_u_curve_intervals_bracket_and_repeat():
    a = u_curve(U_SCORES, n_boot=500, seed=1)
    b = u_curve(U_SCORES, n_boot=500, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert (a["acc_lo"] <= a["accuracy"] + 1e-12).all() and (a["accuracy"] <= a["acc_hi"] + 1e-12).all()
    assert a.loc[2, "acc_lo"] == a.loc[2, "acc_hi"] == 1.0  # every item right at slot 2: no spread


def test_shape_summary_by_hand():
    shape = shape_summary(U_SCORES, n_boot=200)
    acc = shape[shape["metric"] == "accuracy"].set_index("stat")["value"]
    # accuracy (2/3, 1/3, 1): interior = slot 1 = 1/3
    assert acc["primacy"] == pytest.approx(2 / 3 - 1 / 3)
    assert acc["recency"] == pytest.approx(1 - 1 / 3)
    assert acc["middle_dip"] == pytest.approx((2 / 3 + 1) / 2 - 1 / 3)  # = 1/2
    assert acc["worst_slot"] == 1
    assert acc["spread"] == pytest.approx(1 - 1 / 3)
    lp = shape[shape["metric"] == "gold_logprob"].set_index("stat")["value"]
    # gold logprob (-5/3, -2, -1): primacy 1/3, recency 1, dip (-5/3 - 1)/2 + 2 = 2/3, spread 1
    assert lp[["primacy", "recency", "middle_dip", "worst_slot", "spread"]].tolist() == pytest.approx([1 / 3, 1, 2 / 3, 1, 1])
    spread = shape[(shape["metric"] == "accuracy") & (shape["stat"] == "spread")].iloc[0]
    assert spread["lo"] <= spread["value"] <= spread["hi"]
    assert shape.loc[shape["stat"] == "worst_slot", ["lo", "hi"]].isna().all().all()


def test_shape_has_no_middle_with_two_segments():
    # two slots, accuracy (1, 0): spread 1, worst slot 1, no interior -> NaN
    two = explicit("judge", {("j", 0): (0, True, -1.0), ("j", 1): (1, False, -1.0)})
    stats = shape_summary(two, n_boot=50).query("metric == 'accuracy'").set_index("stat")
    assert stats.loc[["primacy", "recency", "middle_dip"], ["value", "lo", "hi"]].isna().all().all()
    assert (stats.loc["spread", "value"], stats.loc["worst_slot", "value"]) == (1.0, 1.0)


def test_shape_stats_on_sparse_slots():
    # lost-in-the-middle style: 10 documents, gold at 0, 4, 9 only; values (0.8, 0.5, 0.6)
    stats = shape_stats(np.array([0.8, 0.5, 0.6]), np.array([0, 4, 9]), 10)
    # primacy 0.8 - 0.5, recency 0.6 - 0.5, dip (0.8 + 0.6)/2 - 0.5 = 0.2, worst 4, spread 0.3
    values = [stats[k][0] for k in ("primacy", "recency", "middle_dip", "worst_slot", "spread")]
    assert values == pytest.approx([0.3, 0.1, 0.2, 4, 0.3])
    # the last slot not measured -> no recency or dip (slot 4 is interior, not "last")
    partial = shape_stats(np.array([0.8, 0.5]), np.array([0, 4]), 10)
    assert math.isnan(partial["recency"][0]) and math.isnan(partial["middle_dip"][0])
    assert partial["primacy"][0] == pytest.approx(0.3)


def test_length_sweep_by_hand():
    short = U_SCORES.assign(meta_prompt_tokens=50)
    long = U_SCORES.assign(item_id=U_SCORES["item_id"] + "L", meta_prompt_tokens=150)
    long = long.assign(logprob=np.where(long["choice"] == 0, -1.0, -5.0))  # every long item right
    sweep = length_sweep(pd.concat([short, long]), "meta_prompt_tokens", [0, 100, 200], n_boot=0)
    # [0, 100): the hand table (2/3, 1/3, 1); [100, 200): all right
    assert sweep.query("length_lo == 0")["accuracy"].tolist() == pytest.approx([2 / 3, 1 / 3, 1.0])
    assert sweep.query("length_lo == 100")["accuracy"].tolist() == [1.0, 1.0, 1.0]
    assert set(sweep["length_hi"]) == {100.0, 200.0}
    # two equal-count buckets split at the median length: the same two groups
    assert len(length_sweep(pd.concat([short, long]), "meta_prompt_tokens", 2, n_boot=0)) == 6


def test_primacy_biased_retrieval_by_hand():
    # 4 documents; gold content scores 1, distractors 0; +2 to whatever sits in slot 0.
    # gold in slot 0: 3 vs 0 -> right; elsewhere: 1 vs 2 (the slot-0 distractor) -> wrong.
    scores = toy_scores("kv", retrieval_variants(4), [[1.0, 0, 0, 0]] * 3, slot_bias=2.0)
    curve = u_curve(scores, n_boot=0)
    assert curve["accuracy"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert curve["gold_logprob"].tolist() == [3.0, 1.0, 1.0, 1.0]
    # accuracy: primacy 1 - 0, recency 0 - 0, dip (1 + 0)/2 - 0, worst slot 1 (earliest tie), spread 1
    acc = shape_summary(scores, n_boot=0).query("metric == 'accuracy'").set_index("stat")["value"]
    assert acc.tolist() == [1.0, 0.0, 0.5, 1.0, 1.0]


# --------------------------------------------------------------------------------------------
# MCQ: selection bias and PriDe

# K = 3 options, contents scored (1.0, 0.5, 0.0), content 0 gold, +0.8 on label A (slot 0):
#   shift 0: A=c0 1.8, B=c1 0.5, C=c2 0.0 -> A = c0 right   (gold in slot 0)
#   shift 1: A=c1 1.3, B=c2 0.0, C=c0 1.0 -> A = c1 wrong   (gold in slot 2)
#   shift 2: A=c2 0.8, B=c0 1.0, C=c1 0.5 -> B = c0 right   (gold in slot 1)
MCQ = toy_scores("mcq", cyclic_variants(3), [[1.0, 0.5, 0.0]] * 4, slot_bias=0.8)


def test_mcq_accuracy_and_selection_by_hand():
    assert u_curve(MCQ, n_boot=0)["accuracy"].tolist() == [1.0, 1.0, 0.0]
    rates = selection_rates(MCQ).set_index("choice")
    # per item: A chosen at shifts 0 and 1, B at shift 2; gold is behind each label once
    assert rates["rate"].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert rates["gold_rate"].tolist() == pytest.approx([1 / 3] * 3)
    assert rates["n_verdicts"].tolist() == [12] * 3
    # chosen contents c0, c1, c0 -> not the same under every shift
    assert content_consistency(MCQ)[["n_items", "consistency"]].iloc[0].tolist() == [4, 0.0]


def test_rstd_by_hand():
    recall = label_recall(MCQ).set_index("gold_choice")["recall"]
    # gold behind A at shift 0 (right), C at shift 1 (wrong), B at shift 2 (right)
    assert recall.tolist() == [1.0, 1.0, 0.0]
    # std(100, 100, 0) = sqrt((2 * 33.33^2 + 66.67^2) / 3) = sqrt(2222.2) = 47.140
    assert rstd(MCQ)["rstd"].iloc[0] == pytest.approx(47.1405, abs=1e-3)


def test_pride_recovers_the_label_prior_by_hand():
    out = pride(MCQ, calib_items=["q0"])
    prior = out["prior"].set_index("choice")["prior"]
    # mean over shifts of log P_obs(ID) = mean content score + 0.8 [ID = A] - mean logsumexp,
    # so prior = softmax(0.8, 0, 0) = (e^.8, 1, 1) / (e^.8 + 2) = (2.225541, 1, 1) / 4.225541
    #          = (0.526688, 0.236656, 0.236656)
    assert prior.tolist() == pytest.approx([0.526688, 0.236656, 0.236656], abs=1e-6)
    assert out["prior"]["meta_label"].tolist() == ["A", "B", "C"]
    summary = out["summary"].iloc[0]
    # held out: q1..q3, 3 shifts each; before 2/3 right; after removing the prior every shift is right
    assert (summary["n_calib_items"], summary["n_eval_items"], summary["n_eval"]) == (1, 3, 9)
    assert (summary["acc_before"], summary["acc_after"]) == pytest.approx((2 / 3, 1.0))
    assert (summary["rstd_before"], summary["rstd_after"]) == pytest.approx((47.1405, 0.0), abs=1e-3)
    assert out["recall"]["recall_after"].tolist() == [1.0, 1.0, 1.0]


def test_pride_averages_item_priors_and_can_keep_one_order():
    unbiased = toy_scores("mcq", cyclic_variants(3), [[1.0, 0.5, 0.0]] * 4).assign(item_id=lambda f: f["item_id"] + "u")
    both = pd.concat([MCQ, unbiased], ignore_index=True)
    prior = pride(both, calib_items=["q0", "q0u"])["prior"]["prior"].tolist()
    # (softmax(0.8, 0, 0) + uniform) / 2 = ((0.526688 + 1/3) / 2, (0.236656 + 1/3) / 2, ...)
    assert prior == pytest.approx([0.430011, 0.284995, 0.284995], abs=1e-6)
    # the paper's protocol: held-out items in their original order only (shift 0: right before and after)
    only_0 = pride(MCQ, calib_items=["q0"], eval_variant=0)["summary"].iloc[0]
    assert (only_0["n_eval"], only_0["acc_before"], only_0["acc_after"]) == (3, 1.0, 1.0)


def test_pride_random_calibration_subset():
    many = toy_scores("mcq", cyclic_variants(3), [[1.0, 0.5, 0.0]] * 40, slot_bias=0.8)
    summary = pride(many, calib_frac=0.05, seed=7)["summary"].iloc[0]
    # floor(0.05 * 40) = 2 calibration items, 38 held out
    assert (summary["n_calib_items"], summary["n_eval_items"]) == (2, 38)
    assert summary["acc_after"] == 1.0
    with pytest.raises(EmptyDataError):
        pride(MCQ, calib_items=["q0", "q1", "q2", "q3"])


def test_label_bias_and_position_bias_are_told_apart():
    # One item, 2 options; the probe varies both the content order and the label order.
    #   variant  slot 0        slot 1        (choice 0 = label A, choice 1 = label B)
    #   v0       A: c0         B: c1
    #   v1       A: c1         B: c0
    #   v2       B: c0         A: c1
    #   v3       B: c1         A: c0
    variants = {
        "v0": [(0, 0, 0), (1, 1, 1)], "v1": [(0, 1, 0), (1, 0, 1)],
        "v2": [(0, 1, 1), (1, 0, 0)], "v3": [(0, 0, 1), (1, 1, 0)],
    }
    labels = {v: ["A", "B"] for v in variants}
    token_biased = toy_scores("mcq", variants, [[0.0, 0.0]], label_bias={"A": 1.0}, labels=labels)
    # always answers "A": label A 4/4; A sits in slot 0 in v0, v1 and slot 1 in v2, v3 -> slots 1/2 each
    assert selection_rates(token_biased, "meta_label").set_index("meta_label")["rate"].tolist() == [1.0, 0.0]
    assert selection_rates(token_biased, "meta_slot").set_index("meta_slot")["rate"].tolist() == [0.5, 0.5]
    # gold (c0) is behind A in v0, v3 and behind B in v1, v2
    assert selection_rates(token_biased, "meta_label")["gold_rate"].tolist() == [0.5, 0.5]
    slot_biased = toy_scores("mcq", variants, [[0.0, 0.0]], slot_bias=1.0, labels=labels)
    assert selection_rates(slot_biased, "meta_slot").set_index("meta_slot")["rate"].tolist() == [1.0, 0.0]
    assert selection_rates(slot_biased, "meta_label").set_index("meta_label")["rate"].tolist() == [0.5, 0.5]


# --------------------------------------------------------------------------------------------
# Judge


def test_judge_metrics_by_hand():
    # answers X (gold) and Y; order XY: verdict 0 = X; order YX: verdict 0 = Y. Verdicts:
    #   j0: XY -> 0 (X, right)  YX -> 1 (X, right)   consistent, correct
    #   j1: XY -> 0 (X, right)  YX -> 0 (Y, wrong)   flips
    #   j2: XY -> 1 (Y, wrong)  YX -> 0 (Y, wrong)   consistent, wrong
    #   j3: XY -> 0 (X, right)  YX -> 0 (Y, wrong)   flips
    verdicts = {"j0": (0, 1), "j1": (0, 0), "j2": (1, 0), "j3": (0, 0)}
    rows = []
    for item, picks in verdicts.items():
        for order, pick, contents in (("XY", picks[0], (0, 1)), ("YX", picks[1], (1, 0))):
            for choice in (0, 1):
                rows.append({"task": "judge", "item_id": item, "variant": order, "n_segments": 2,
                             "gold_slot": contents.index(0), "choice": choice, "logprob": 0.0 if choice == pick else -1.0,
                             "n_tokens": 1, "is_gold": contents[choice] == 0, "meta_content": contents[choice]})
    out = judge_metrics(pd.DataFrame(rows))
    summary = out["summary"].iloc[0]
    assert summary["flip_rate"] == 0.5  # j1, j3
    assert summary["first_slot_rate"] == 0.75  # verdict 0 in 6 of 8
    assert summary["accuracy"] == 0.5  # 4 of 8
    assert summary["consistent_correct"] == 0.25  # j0
    assert (summary["n_items"], summary["n_verdicts"]) == (4, 8)
    by_order = out["by_order"].set_index("variant")
    assert by_order["accuracy"].tolist() == [0.75, 0.25]  # XY: j0, j1, j3; YX: j0
    assert by_order["first_slot_rate"].tolist() == [0.75, 0.75]


@pytest.mark.parametrize("bias, flips, first, accuracy", [(0.5, 0.0, 0.5, 1.0), (2.0, 1.0, 1.0, 0.5)])
def test_judge_toy_scorer(bias, flips, first, accuracy):
    # better answer scores 1, worse 0, +bias in slot 0. Swapped: worse first scores 0 + bias vs 1:
    # bias 0.5 -> still the better one (no flip); bias 2 -> the first one (flip, wrong)
    scores = toy_scores("judge", judge_variants(), [[1.0, 0.0]] * 5, slot_bias=bias)
    summary = judge_metrics(scores)["summary"].iloc[0]
    assert (summary["flip_rate"], summary["first_slot_rate"], summary["accuracy"]) == (flips, first, accuracy)
    assert summary["consistent_correct"] == 1.0 - flips


# --------------------------------------------------------------------------------------------
# Invariance: a model that ignores order shows no position effect anywhere


def mixed_tables(slot_bias):
    utility = np.random.default_rng(0).normal(size=(12, 4))  # some items get content 0 wrong
    return pd.concat([
        toy_scores("kv", retrieval_variants(4), utility, slot_bias=slot_bias),
        toy_scores("mcq", cyclic_variants(4), utility, slot_bias=slot_bias),
        toy_scores("judge", judge_variants(), utility[:, :2], slot_bias=slot_bias),
    ], ignore_index=True)


def test_invariant_toy_scorer_reads_no_bias():
    scores = mixed_tables(slot_bias=0.0)
    check = invariance_check(scores)
    assert check["invariant"].all()
    assert (check[["acc_spread", "lp_spread", "flip_rate"]] == 0).all().all() and (check["consistency"] == 1).all()
    accuracy = u_curve(scores, n_boot=0).groupby("task")["accuracy"].first()
    assert 0 < accuracy["kv"] < 1  # flat, not trivially all-right
    assert judge_metrics(scores.query("task == 'judge'"))["summary"]["flip_rate"].iloc[0] == 0.0


def test_biased_toy_scorer_fails_the_check():
    check = invariance_check(mixed_tables(slot_bias=3.0)).set_index("task")
    assert not check["invariant"].any()
    assert (check["acc_spread"] > 0).all() and (check["consistency"] < 1).all()


# --------------------------------------------------------------------------------------------
# Attention basin and AttnRank

# Two items, one layer, three slots (the middle one the gold in item a):
#   item a: mass (0.5, 0.1, 0.4)   item b: (0.3, 0.1, 0.2)   n_tokens (10, 5, 20)
ATTN = pd.DataFrame({
    "item_id": ["a"] * 3 + ["b"] * 3, "variant": 0, "layer": 0, "slot": [0, 1, 2] * 2,
    "mass": [0.5, 0.1, 0.4, 0.3, 0.1, 0.2], "n_tokens": [10, 5, 20] * 2, "is_gold": [False, True, False] * 2,
})


def test_attention_profile_by_hand():
    profile = attention_profile(ATTN, n_boot=0)
    assert profile["mass"].tolist() == pytest.approx([0.4, 0.1, 0.3])  # (0.5+0.3)/2, 0.1, (0.4+0.2)/2
    per_token = attention_profile(ATTN, per_token=True, n_boot=0)
    # a: (0.05, 0.02, 0.02), b: (0.03, 0.02, 0.01) -> (0.04, 0.02, 0.015)
    assert per_token["mass"].tolist() == pytest.approx([0.04, 0.02, 0.015])
    split = attention_profile(ATTN, by=["is_gold"], n_boot=0)
    assert row(split, is_gold=True, slot=1)["mass"] == pytest.approx(0.1)
    with_ci = attention_profile(ATTN, n_boot=200)
    assert (with_ci["mass_lo"] <= with_ci["mass"] + 1e-12).all() and with_ci.loc[1, "mass_lo"] == pytest.approx(0.1)


def test_attention_shape_by_hand():
    shape = attention_shape(ATTN, n_boot=0).set_index("stat")["value"]
    # (0.4, 0.1, 0.3): primacy 0.3, recency 0.2, dip 0.35 - 0.1 = 0.25, worst 1, spread 0.3 -> a basin
    assert shape.tolist() == pytest.approx([0.3, 0.2, 0.25, 1, 0.3])


def test_attnrank_by_hand():
    profile = attnrank_profile(ATTN)
    assert profile["rank"].tolist() == [0, 2, 1]  # mass (0.4, 0.1, 0.3)
    # retrieval order: segment 0 -> most attended slot 0, segment 1 -> slot 2, segment 2 -> slot 1
    assert attnrank_order(profile) == (0, 2, 1)
    # relevance 2 > 0 > 1: slot 0 <- 2, slot 2 <- 0, slot 1 <- 1
    assert attnrank_order(profile, [2, 0, 1]) == (2, 1, 0)
    prompt = SegmentedPrompt("Q: ", ("a", "b", "c"), " A:")
    assert apply_attnrank(prompt, profile).segments == ("a", "c", "b")
    with pytest.raises(Exception, match="segments"):
        apply_attnrank(SegmentedPrompt("", ("a", "b"), ""), profile)


def test_attnrank_profile_over_layers():
    second = ATTN.assign(layer=1, mass=[0.1, 0.2, 0.6] * 2)
    both = pd.concat([ATTN, second], ignore_index=True)
    # mean of (0.4, 0.1, 0.3) and (0.1, 0.2, 0.6) = (0.25, 0.15, 0.45) -> ranks (1, 2, 0)
    assert attnrank_profile(both)["rank"].tolist() == [1, 2, 0]
    assert attnrank_profile(both, layers=[1])["mass"].tolist() == pytest.approx([0.1, 0.2, 0.6])
