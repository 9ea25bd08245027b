"""Position-id and RoPE-frequency edits against independent computations: HuggingFace's forward
with edited position ids, the learned position table shifted by hand, rotary buffers set by hand
(inv_freq / F, a new base, HuggingFace's own YaRN parameters)."""

import copy
import math

import pytest
import torch
from transformers.modeling_rope_utils import _compute_yarn_parameters

from posbench.data.segments import SegmentedPrompt
from posbench.errors import BadOptionError, HeadIndexError, PositionIdError, PosbenchError
from posbench.interventions.positions import PositionIds, PositionShift, SharedPositions
from posbench.interventions.rope_scaling import PositionInterpolation, RopeBase, Yarn
from posbench.probes.sinks import SinkProbe
from posbench.registry import parse_intervention
from posbench.sites import Capture

TEXTS = ["Position shapes what a model does, and we can change it.", "Hi there"]


def _batch(model):
    return model.batch(model.tokenize(TEXTS), "left")


# The references below are HF forwards of the loaded model, which runs eager attention; the edits
# are compared on posbench's eager path too, so the check stays exact (the fast SDPA path differs
# from eager by float rounding, ~3e-5 in SmolLM2's logits, and is checked in test_backend_fast.py).
def _forward(model, batch, *interventions):
    with model.using_attention("eager"), model.intervene(*interventions):
        return model.forward(batch)


def _hidden(model, batch, *interventions):
    """Final normalised hidden states (the unembedding's input: Gemma's 262k-token unembedding
    would dominate the runtime, and adds nothing to a comparison of two forwards)."""
    with model.using_attention("eager"), model.intervene(*interventions):
        return model.run(batch, [Capture("h", "final_norm", lambda x, ctx: x)]).captured["h"]


def _real(batch, logits):
    return logits[batch.attention_mask.bool()]


def _rotary_modules(model):
    """(module, buffer name) of every rotary inv_freq the HF model holds (Gemma 3: one per layer type)."""
    for name, module in model.hf_model.named_modules():
        if name.endswith("rotary_emb._original_component"):
            for buffer, _ in module.named_buffers(recurse=False):
                if buffer.endswith("inv_freq") and not buffer.endswith("original_inv_freq"):
                    yield module, buffer


def _with_rotary(model, batch, new_inv_freq, attention_scaling=None):
    """Final hidden states with every rotary buffer replaced by ``new_inv_freq(old, buffer name)`` by hand."""
    saved = []
    with torch.no_grad():
        for module, buffer in _rotary_modules(model):
            old = getattr(module, buffer)
            saved.append((module, buffer, old.clone(), getattr(module, "attention_scaling", None)))
            old.copy_(new_inv_freq(old.clone(), buffer))
            if attention_scaling is not None:
                module.attention_scaling = attention_scaling
        try:
            return _hidden(model, batch)
        finally:
            for module, buffer, value, scaling in saved:
                getattr(module, buffer).copy_(value)
                if scaling is not None:
                    module.attention_scaling = scaling


# ----------------------------------------------------------------------------- integer ids
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_neox", pytest.param("smollm2", marks=pytest.mark.embedded)])
def test_shift_is_hf_forward_with_shifted_ids_and_invisible_to_rope(request, fixture):
    model = request.getfixturevalue(fixture)
    batch = _batch(model)
    shifted = _forward(model, batch, PositionShift(1000))
    with torch.no_grad():
        by_hand = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 position_ids=batch.position_ids + 1000).logits
    torch.testing.assert_close(_real(batch, shifted), _real(batch, by_hand), rtol=0, atol=1e-5)
    # RoPE scores see only position differences: the shift changes nothing but float error
    plain = _forward(model, batch)
    torch.testing.assert_close(_real(batch, shifted), _real(batch, plain), rtol=0, atol=2e-4)


def test_shift_on_a_learned_table_is_the_table_shifted_by_hand(tiny_gpt2):
    batch = _batch(tiny_gpt2)
    shifted = _forward(tiny_gpt2, batch, PositionShift(7))
    wpe = tiny_gpt2.hf_model.transformer.wpe.weight
    saved = wpe.detach().clone()
    with torch.no_grad():
        wpe[:-7] = saved[7:]
        by_hand = tiny_gpt2.forward(batch)
        wpe.copy_(saved)
    torch.testing.assert_close(_real(batch, shifted), _real(batch, by_hand), rtol=0, atol=1e-5)
    assert (_real(batch, shifted) - _real(batch, tiny_gpt2.forward(batch))).abs().max() > 1e-3


def test_shared_and_explicit_ids_by_hand(tiny_llama):
    prompt = SegmentedPrompt("abc", ("de", "fghi", "jkl"), "mn")  # byte tokenizer with BOS
    batch = tiny_llama.segment_batch([prompt, SegmentedPrompt("x", ("yy", "z", "w"), "?")], "left")
    every = SharedPositions().edit_batch(batch, tiny_llama).real_position_ids(0).tolist()
    assert every == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 4, 5, 6, 8, 9]  # BOS+abc, three segments from 4, suffix after the longest
    some = SharedPositions(segments=[0, 2]).edit_batch(batch, tiny_llama).real_position_ids(0).tolist()
    assert some == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 4, 5, 6, 10, 11]  # 0 and 2 share 4; 1 in between; suffix after
    ids = [0, 5, 5, 9, 2, 3, 7, 1, 0, 4, 4, 4, 6, 8, 30]
    explicit = _forward(tiny_llama, batch, PositionIds(ids))
    with torch.no_grad():
        hand_ids = batch.position_ids.clone()
        hand_ids[0, batch.real_columns(0)] = torch.tensor(ids)
        hand_ids[1, batch.real_columns(1)] = torch.tensor(ids[: int(batch.lengths[1])])
        by_hand = tiny_llama.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=hand_ids).logits
    torch.testing.assert_close(_real(batch, explicit), _real(batch, by_hand), rtol=0, atol=1e-5)
    shared = _forward(tiny_llama, batch, SharedPositions())
    with torch.no_grad():
        hand_ids = batch.position_ids.clone()
        hand_ids[0, batch.real_columns(0)] = torch.tensor(every)
        hand_ids[1, batch.real_columns(1)] = torch.tensor([0, 1, 2, 3, 2, 2, 4])  # BOS x | yy z w from 2 | ?
        by_hand = tiny_llama.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=hand_ids).logits
    torch.testing.assert_close(_real(batch, shared), _real(batch, by_hand), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- frequencies
@pytest.mark.parametrize(
    "fixture", ["tiny_neox", pytest.param("smollm2", marks=pytest.mark.embedded), pytest.param("gemma", marks=pytest.mark.embedded)]
)
def test_interpolation_and_ntk_base_equal_rotary_buffers_set_by_hand(request, fixture):
    model = request.getfixturevalue(fixture)
    batch = _batch(model)
    plain = _hidden(model, batch)
    edited = _hidden(model, batch, PositionInterpolation(4.0))
    torch.testing.assert_close(_real(batch, edited), _real(batch, _with_rotary(model, batch, lambda f, _: f / 4.0)),
                               rtol=0, atol=1e-5)
    assert (_real(batch, edited) - _real(batch, plain)).abs().max() > 1e-3

    def ntk(freq, buffer):  # theta' = theta * s^(r/(r-2)), inv_freq recomputed from theta'
        r = 2 * len(freq)
        layer_type = buffer.removesuffix("inv_freq").rstrip("_") or model.card.layer_types[0]
        theta = model.card.rope_bases[model.card.layer_types.index(layer_type)]
        return 1.0 / (theta * 8.0 ** (r / (r - 2))) ** (torch.arange(0, r, 2).float() / r)

    edited = _hidden(model, batch, RopeBase(scale=8.0))  # f_k * s^(-2k/(r-2)): the same numbers, rounded otherwise
    torch.testing.assert_close(_real(batch, edited), _real(batch, _with_rotary(model, batch, ntk)), rtol=0, atol=1e-4)


def test_new_base_equals_inv_freq_recomputed_by_hand(tiny_neox):
    batch = _batch(tiny_neox)
    edited = _hidden(tiny_neox, batch, RopeBase(base=500.0))
    by_hand = _with_rotary(tiny_neox, batch, lambda f, _: 500.0 ** -(torch.arange(len(f)).float() * 2 / (2 * len(f))))
    torch.testing.assert_close(_real(batch, edited), _real(batch, by_hand), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_llama", pytest.param("smollm2", marks=pytest.mark.embedded)])
def test_yarn_equals_huggingface_yarn_parameters(request, fixture):
    model = request.getfixturevalue(fixture)
    batch = _batch(model)
    config = copy.deepcopy(model.hf_model.config)
    config.rope_parameters = {"rope_type": "yarn", "rope_theta": model.card.rope_bases[0], "factor": 4.0,
                              "original_max_position_embeddings": 64, "beta_fast": 16.0, "beta_slow": 2.0}
    inv_freq, attention_factor = _compute_yarn_parameters(config)
    assert attention_factor == pytest.approx(0.1 * math.log(4.0) + 1)
    edited = _hidden(model, batch, Yarn(4.0, original=64, beta_fast=16, beta_slow=2))
    by_hand = _with_rotary(model, batch, lambda f, _: inv_freq, attention_scaling=attention_factor)
    torch.testing.assert_close(_real(batch, edited), _real(batch, by_hand), rtol=0, atol=1e-5)
    low, high = inv_freq[0], inv_freq[-1]  # fast pairs kept, slow pairs interpolated
    own = model.rotary_inv_freq(0)
    assert low == pytest.approx(float(own[0])) and high == pytest.approx(float(own[-1]) / 4.0)


# ----------------------------------------------------------------------------- through a probe
@pytest.mark.embedded
def test_sink_stays_on_the_first_token_when_positions_start_at_1000(smollm2):
    """RoPE cannot see absolute positions: the sink is made by the causal mask (the first token
    sees only itself), so it stays on the first token however far the ids are shifted."""
    probe = SinkProbe(n_sequences=2, seq_len=24, inputs=("natural",), first_token_test=False)
    plain = probe.run(smollm2).tables["head_mass"]
    shifted = probe.run(smollm2, interventions=[PositionShift(1000)])
    assert shifted.interventions == [{"name": "position-shift", "params": {"offset": 1000}}]
    first = lambda t: t[t.key_pos == 0].mean_mass.to_numpy()  # noqa: E731
    assert first(plain).mean() > 0.3
    assert abs(first(shifted.tables["head_mass"]) - first(plain)).max() < 1e-3


# ----------------------------------------------------------------------------- errors and specs
def test_position_edit_errors_and_specs(tiny_gpt2, tiny_llama):
    assert parse_intervention("position-shift:1000").offset == 1000
    assert parse_intervention("position-shift:offset=3").offset == 3
    assert parse_intervention("shared-positions:segments=2,0").segments == (0, 2)
    assert parse_intervention("position-ids:0-2,9,9,5,4").ids == [0, 1, 2, 9, 9, 5, 4]
    assert parse_intervention("position-ids:0-2,9").params() == {"ids": "0-2,9"}
    iv = parse_intervention("rope-base:scale=4;layers=1")
    assert (iv.scale, iv.layers) == (4.0, (1,))
    iv = parse_intervention("yarn:8;original=2048;beta_fast=16")
    assert (iv.factor, iv.original, iv.beta_fast) == (8.0, 2048, 16.0)
    for spec, message in [
        ("position-shift:1.5", "bad option offset='1.5' for intervention 'position-shift': expected integer"),
        ("position-shift", "position-shift needs an OFFSET"),
        ("position-interpolation:0", "bad option factor='0'"),
        ("position-interpolation:2;speed=3", "unknown option 'speed' for intervention 'position-interpolation'"),
        ("rope-base:1000;scale=2", "either a BASE"),
        ("yarn:4;beta_fast=1", "beta_fast \\(1\\) must exceed beta_slow"),
        ("position-ids:0,x", "bad option ids='0,x' for intervention 'position-ids': expected comma-separated ID"),
        ("position-ids:5-4", "range 5-4 runs backwards"),
        ("position-ids:0-99999999999", "above 1e\\+09"),
        ("shared-positions:segments=1", "at least two segments"),
    ]:
        with pytest.raises(BadOptionError, match=message):
            parse_intervention(spec)
    with pytest.raises(PositionIdError, match="not an integer; for fractional positions use position-interpolation"):
        PositionIds([0, 1.5])
    batch = _batch(tiny_gpt2)
    with pytest.raises(PositionIdError, match="position id 5.. is beyond tiny-gpt2's learned position table \\(rows 0-511\\)"):
        _forward(tiny_gpt2, batch, PositionShift(500))
    with pytest.raises(PositionIdError, match="offset 512 leaves no row of tiny-gpt2's learned position table"):
        PositionShift(512).validate(tiny_gpt2)
    PositionShift(511).validate(tiny_gpt2)  # fits a one-token input
    with pytest.raises(PositionIdError, match="position id -1 is negative"):
        _forward(tiny_gpt2, batch, PositionShift(-1))
    with pytest.raises(PositionIdError, match="row 0 has [0-9]+ tokens but only 3 ids"):
        _forward(tiny_gpt2, batch, PositionIds([0, 1, 2]))
    for iv in (PositionInterpolation(2.0), Yarn(2.0), RopeBase(base=100.0)):
        with pytest.raises(PosbenchError, match="uses learned_absolute positions, and a learned position table has no fractional"):
            _forward(tiny_gpt2, batch, iv)
    with pytest.raises(HeadIndexError, match="layer 5 out of range: tiny-llama has 2 layers"):
        _forward(tiny_llama, _batch(tiny_llama), PositionInterpolation(2.0, layers=[5]))
    with pytest.raises(PositionIdError, match="shared-positions needs segmented prompts"):
        _forward(tiny_llama, _batch(tiny_llama), SharedPositions())
