"""Interventions against independent computations, and their bookkeeping."""

import pytest
import torch

import posbench
from posbench.errors import BadOptionError, HeadIndexError, UnknownInterventionError
from posbench.interventions.head_ablation import HeadAblation
from posbench.probes.sinks import SinkProbe
from posbench.registry import parse_intervention


def _o_proj_columns(model, layer, head):
    hf = model.hf_model
    d = model.d_head
    if hasattr(hf, "transformer"):  # GPT-2 Conv1D: weight is [in, out]
        return hf.transformer.h[layer].attn.c_proj.weight, (slice(head * d, (head + 1) * d), slice(None))
    return hf.model.layers[layer].self_attn.o_proj.weight, (slice(None), slice(head * d, (head + 1) * d))


@pytest.mark.parametrize("fixture,heads", [("tiny_llama", [(1, 2)]), ("tiny_gpt2", [(0, 1), (1, 3)]), ("smollm2", [(7, 4), (20, 8)])])
def test_head_ablation_equals_zeroed_weights(request, fixture, heads):
    model = request.getfixturevalue(fixture)
    batch = model.batch(model.tokenize(["Position shapes what a model does.", "Short"]), "left")
    baseline = model.forward(batch)
    with model.intervene(HeadAblation(heads)):
        ablated = model.forward(batch)
    saved = []
    with torch.no_grad():
        for layer, head in heads:
            weight, cols = _o_proj_columns(model, layer, head)
            saved.append((weight, cols, weight[cols].clone()))
            weight[cols] = 0.0
        by_hand = model.forward(batch)
        for weight, cols, value in saved:
            weight[cols] = value
    assert (baseline - ablated).abs().max() > 1e-3
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.forward(batch), baseline)  # removed on exit


def test_interventions_compose_and_are_recorded(tiny_llama):
    a, b = HeadAblation([(0, 1)]), HeadAblation([(1, 3)])
    result = SinkProbe(n_sequences=2, first_token_test=False).run(tiny_llama, interventions=(a, b))
    assert result.interventions == [a.describe(), b.describe()]
    assert "under ablate-heads" in result.title()
    with tiny_llama.intervene(a):  # entered by the user: still recorded
        inner = SinkProbe(n_sequences=2, first_token_test=False).run(tiny_llama)
    assert inner.interventions == [a.describe()]
    assert tiny_llama.active_interventions == []
    batch = tiny_llama.batch(tiny_llama.tokenize(["composition"]))
    with tiny_llama.intervene(a, b):
        both = tiny_llama.forward(batch)
    with tiny_llama.intervene(HeadAblation([(0, 1), (1, 3)])):
        joint = tiny_llama.forward(batch)
    torch.testing.assert_close(both, joint)


def test_head_index_out_of_range_is_clear(smollm2):
    with pytest.raises(HeadIndexError, match="head 9 out of range: smollm2-135m-instruct has 9 query heads"):
        with smollm2.intervene(HeadAblation([(3, 9)])):
            pass
    with pytest.raises(HeadIndexError, match="layer 30 out of range"):
        SinkProbe(n_sequences=1).run(smollm2, interventions=[HeadAblation([(30, 0)])])
    assert smollm2.active_interventions == []


def test_intervention_specs():
    assert parse_intervention("ablate-heads:3.1,4.2").heads == [(3, 1), (4, 2)]
    with pytest.raises(BadOptionError, match="malformed head 'x'"):
        parse_intervention("ablate-heads:x")
    with pytest.raises(UnknownInterventionError, match="Did you mean 'ablate-heads'"):
        parse_intervention("ablate-head:1.1")
    assert "ablate-heads" in posbench.available_interventions()
    assert "sinks" in posbench.available_probes()
