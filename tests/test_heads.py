"""The shared head taxonomy (posbench.heads): hand-made statistics for every trait and the
precedence, and planted heads that every probe grouping heads must label the same way."""

import math

import numpy as np
import pandas as pd
import pytest

import posbench
from posbench.heads import PRIMARY_ORDER, TRAITS, HeadThresholds, head_traits, sink_trait
from posbench.planted import plant_offset_head
from posbench.probes.positional_heads import PositionalHeadsProbe
from posbench.probes.rope_usage import RopeUsageProbe
from posbench.probes.sinks import SinkProbe

QUIET = dict(alpha0_natural=0.05, alpha0_random=0.05, top_offset_random=0, top_score_random=0.1, top_offset_natural=0,
             top_score_natural=0.1, window_mass_random=0.5, window_mass_natural=0.5, content_invariance=0.9, pds=0.8,
             duplicate_score=0.0, induction_score=0.0)
CASES = {  # name: (statistics that differ from a quiet, broad head; expected traits; expected primary)
    "diffuse": ({}, {"diffuse"}, "diffuse"),
    "sink + induction": (dict(alpha0_natural=0.9, alpha0_random=0.8, induction_score=0.7, pds=0.3),
                         {"sink", "induction", "content"}, "induction"),
    "first common word": (dict(alpha0_natural=0.6, alpha0_random=0.05, content_invariance=0.4),
                          {"content"}, "content"),
    "sink + previous-token": (dict(alpha0_natural=0.7, alpha0_random=0.7, top_offset_random=1, top_offset_natural=1,
                                   top_score_random=0.7, top_score_natural=0.5, window_mass_random=0.95,
                                   window_mass_natural=0.9), {"sink", "previous_token"}, "previous-token"),
    "fixed offset 3": (dict(top_offset_random=3, top_offset_natural=3, top_score_random=0.9, top_score_natural=0.8),
                       {"fixed_offset"}, "fixed-offset"),
    "offset disagrees": (dict(top_offset_random=1, top_offset_natural=2, top_score_random=0.9, top_score_natural=0.8),
                         {"diffuse"}, "diffuse"),
    "self": (dict(top_score_random=0.5, top_score_natural=0.6), {"self"}, "self"),
    "local window": (dict(window_mass_random=0.9, window_mass_natural=0.8, top_score_random=0.4), {"local_window"},
                     "local-window"),
    "sink at the threshold": (dict(alpha0_natural=0.3, alpha0_random=0.9), {"diffuse"}, "diffuse"),
    "sink, content rest": (dict(alpha0_natural=0.95, alpha0_random=0.9, pds=0.3), {"sink", "content"}, "sink"),
    "sink, random not measured": (dict(alpha0_natural=0.5, alpha0_random=math.nan), {"sink", "diffuse"}, "sink"),
    "duplicate": (dict(duplicate_score=0.5, content_invariance=0.5), {"duplicate", "content"}, "duplicate"),
}


def test_traits_and_primary_label_hand_cases():
    stats = pd.DataFrame([{"layer": 0, "head": i, **QUIET, **diff} for i, (diff, _, _) in enumerate(CASES.values())])
    heads = head_traits(stats, HeadThresholds())
    for (name, (_, traits, primary)), row in zip(CASES.items(), heads.to_dict("records")):
        assert {t for t in TRAITS if row[t]} == traits, name
        assert row["primary"] == primary, name
        assert row["traits"].split(",") == [t.replace("_", "-") for t in PRIMARY_ORDER if t in traits], name
    offsets = dict(zip(CASES, heads.offset))
    assert offsets["fixed offset 3"] == 3 and offsets["sink + previous-token"] == 1 and offsets["self"] == 0
    assert offsets["local window"] == -1 and offsets["offset disagrees"] == -1


def test_sink_trait_needs_both_inputs_when_random_was_measured():
    assert sink_trait([0.5, 0.5, 0.5, 0.2], [0.5, 0.1, np.nan, 0.9], 0.3).tolist() == [True, False, True, False]
    assert sink_trait([0.31, 0.3], None, 0.3).tolist() == [True, False]


def test_thresholds_are_options_of_every_probe_that_groups_heads():
    from dataclasses import fields

    names = {f.name for f in fields(HeadThresholds)}
    for probe in (PositionalHeadsProbe, RopeUsageProbe):
        assert names <= {f.name for f in fields(probe.Config)}
    heads = head_traits(pd.DataFrame([{"layer": 0, "head": 0, **QUIET, "induction_score": 0.25}]),
                        HeadThresholds(induction_threshold=0.2))
    assert heads.induction.item() and heads.primary.item() == "induction"


# ----------------------------------------------------------------------------- planted heads
@pytest.fixture(scope="module")
def planted():
    """Layer 0 of tiny-llama: head 0 a sink *and* a previous-token head, head 2 an offset-3 head."""
    model = posbench.load_model("tiny-llama")
    plant_offset_head(model, head=0, offset=1, strength=1.0, pairs=[0, 1, 2, 3], sink_strength=2.1)
    plant_offset_head(model, head=2, offset=3)
    return model


def test_planted_sink_and_previous_token_head_carries_both_traits(planted):
    heads = PositionalHeadsProbe(n_random=4, n_natural=4, n_repeated=2).run(planted).tables["heads"]
    by = heads.set_index(["layer", "head"])
    both = by.loc[(0, 0)]
    assert both.sink and both.previous_token and both.primary == "previous-token" and both.offset == 1
    assert 0.3 < both.alpha0_natural < 0.9 and both.top_score_random > 0.85
    assert by.loc[(0, 2)].primary == "fixed-offset" and by.loc[(0, 2)].offset == 3 and not by.loc[(0, 2)].sink
    others = heads[~((heads.layer == 0) & heads["head"].isin([0, 2]))]
    assert not others[["sink", "self", "previous_token", "fixed_offset", "local_window", "induction"]].any().any()


def test_every_probe_labels_the_planted_heads_the_same_and_alpha0_counts_query_0(planted):
    """Same sequences in all three probes: identical alpha_0 (query 0 included everywhere, Gu et
    al.'s definition) and identical traits from the one taxonomy."""
    n, length = 4, 64
    pos = PositionalHeadsProbe(n_random=n, n_natural=n, n_repeated=2, seq_len=length).run(planted).tables["heads"]
    rope = RopeUsageProbe(n_random=n, n_sequences=n, n_repeated=2, seq_len=length, band_fractions=()).run(planted)
    sinks = SinkProbe(n_sequences=n, seq_len=length, inputs=("natural", "random"), first_token_test=False).run(planted)
    sink_heads = sinks.tables["heads"]
    np.testing.assert_allclose(sink_heads.alpha0_natural, pos.alpha0_natural, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sink_heads.alpha0_random, pos.alpha0_random, rtol=1e-5, atol=1e-6)
    assert sink_heads.sink.tolist() == pos.sink.tolist() and sinks.summary["sink_heads"] == 1
    rh = rope.tables["heads"]
    assert rh[list(TRAITS) + ["primary", "offset"]].equals(pos[list(TRAITS) + ["primary", "offset"]])
    # query 0 attends only to itself: a head with no sink still has alpha_0 >= 1/T
    assert (pos.alpha0_natural >= 1 / length - 1e-6).all()
