"""The sink probe against hand-computed cases, a planted head, and the published results."""

import numpy as np
import pytest
import torch

import posbench
from posbench.planted import plant_first_token_head
from posbench.probes.sinks import SinkProbe, key_mass


def test_key_mass_hand_computed_right_and_left_padding():
    # One head, row 0 has 3 real tokens (right padded to 4); row 1 has 2 (left padded).
    pattern = torch.zeros(2, 1, 4, 4)
    pattern[0, 0, :3, :3] = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
    pattern[0, 0, 3] = torch.tensor([0.9, 0.1, 0, 0])  # a pad query: must be ignored
    pattern[1, 0, 2:, 2:] = torch.tensor([[1.0, 0], [0.25, 0.75]])
    pattern[1, 0, :2, 0] = 1.0  # pad queries again
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])
    offsets, lengths = torch.tensor([0, 2]), torch.tensor([3, 2])
    mass = key_mass(pattern, mask, offsets, lengths, torch.tensor([[0, 1], [0, 1]]))
    # key 0 of row 0: (1 + .5 + .2) / 3 queries; key 1: (.5 + .3) / 2 queries
    assert mass[0, 0].tolist() == pytest.approx([1.7 / 3, 0.8 / 2])
    # row 1: key 0 seen by 2 queries: (1 + .25)/2 ; key 1 by 1 query: .75
    assert mass[1, 0].tolist() == pytest.approx([1.25 / 2, 0.75])


def test_planted_sink_head_is_the_only_one_flagged():
    model = posbench.load_model("tiny-llama")
    plant_first_token_head(model, head=2)
    result = SinkProbe(n_sequences=8, inputs=("natural", "random"), first_token_test=False).run(model)
    hm = result.tables["head_mass"]
    k0 = hm[hm.key_pos == 0]
    flagged = {(int(r.layer), int(r.head)) for r in k0.itertuples() if r.sink_rate >= 0.5}
    assert flagged == {(0, 2)}
    planted = k0[(k0.layer == 0) & (k0["head"] == 2)]
    assert (planted.mean_mass > 0.95).all()
    others = k0[~((k0.layer == 0) & (k0["head"] == 2))]
    assert (others.sink_rate == 0).all() and (others.mean_mass < 0.3).all()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_batch_equals_one_sequence_at_a_time(tiny_llama, smollm2, padding_side):
    from posbench.data import natural_texts

    texts = [t[: 60 + 70 * i] for i, t in enumerate(natural_texts()[:5])]  # different lengths
    for model in (tiny_llama, smollm2):
        lengths = {len(s) for s in model.tokenize(texts)}
        assert len(lengths) == 5, "the test needs sequences of different lengths"
        kw = dict(seq_len=512, first_token_test=True)
        one = SinkProbe(batch_size=1, **kw).run(model, data=texts)
        padded = SinkProbe(batch_size=5, padding_side=padding_side, **kw).run(model, data=texts)
        for name in ("head_mass", "first_token", "resid_position"):
            a, b = one.tables[name], padded.tables[name]
            num = a.select_dtypes("number").columns
            np.testing.assert_allclose(a[num].to_numpy(), b[num].to_numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def embedded_sinks(embedded):
    return embedded, SinkProbe().run(embedded)


@pytest.mark.embedded
def test_published_sink_result_on_embedded_models(embedded_sinks):
    """Gu et al.: past the first layers, most heads put most of their attention on the first
    token, on natural text and on random tokens (Sink_1 > 50% with epsilon 0.3)."""
    model, result = embedded_sinks
    hm = result.tables["head_mass"]
    for kind in ("natural", "random"):
        late = hm[(hm["input"] == kind) & (hm.layer >= 2)]
        first = late[late.key_pos == 0]
        assert result.summary[f"sink_rate_{kind}_pct"] > 50
        assert (first.sink_rate > 0.5).mean() > 0.5, "most heads past layer 1 are sinks"
        later_keys = late[late.key_pos > 0].groupby(["layer", "head"]).mean_mass.max()
        assert first.mean_mass.mean() > 5 * later_keys.mean(), "position 0 dominates positions 1-3"


@pytest.mark.embedded
def test_massive_activations_sit_on_the_first_token(embedded_sinks):
    """Sun et al.: a few residual dimensions reach > 1000x the median, on the starting token."""
    model, result = embedded_sinks
    top = result.tables["massive_top"]
    massive = top[top.massive & (top["input"] == "natural")]
    assert len(massive) > 0
    assert massive.position.value_counts().idxmax() == 0
    assert massive.dim.nunique() <= 4, "massive activations live in a handful of fixed dimensions"


@pytest.mark.embedded
def test_first_token_or_position(embedded_sinks):
    """Gemma-3 always saw <bos> in training: its sink is the BOS *token* and moves with it.
    SmolLM2 prepends no BOS: whatever token stands at position 0 becomes the sink."""
    model, result = embedded_sinks
    s = result.summary
    if model.card.adds_bos:
        assert s["sink_follows"] == "token"
        assert s["first_token:bos_removed:mass_pos0"] < 0.2 < s["first_token:as_is:mass_pos0"]
    else:
        assert s["sink_follows"] == "position 0"
        assert s["first_token:first_swapped:mass_pos0"] > 0.8 * s["first_token:as_is:mass_pos0"]
        # Gu et al.: a repeated-token sequence has no sink (Llama-2/3, Mistral: 0.00)
        assert s["sink_rate_repeated_pct"] < 5


def test_result_presentation(tiny_llama):
    result = SinkProbe(n_sequences=2, first_token_test=True).run(tiny_llama)
    html = result._repr_html_()
    assert "sinks on tiny-llama" in html and "plotly" in html.lower()
    assert set(result.figures) >= {"first_token_mass", "sink_rate_by_layer", "massive_activations"}
    assert result.metadata["attn_implementation"] == "sdpa"  # the default; eager is load_model(..., attn_implementation="eager")
    assert result.data_digest and result.model_card["n_layers"] == 2
