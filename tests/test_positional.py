"""Positional-heads and RoPE-usage probes and the RoPE band interventions: hand cases, planted
mechanisms, independent computations, and the published results on the embedded models."""

import math
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import posbench
from posbench.errors import PosbenchError
from posbench.interventions.rope_bands import RopeBandZero, RopePositionFree
from posbench.planted import plant_offset_head
from posbench.probes.positional_heads import PositionalHeadsProbe
from posbench.probes.rope_usage import RopeUsageProbe
from posbench.sites import Capture
from posbench.reduce import offset_sums, pair_scores, position_dependence, rotary_pairs, self_and_previous


# ----------------------------------------------------------------------------- hand cases
def test_offset_profile_hand_case():
    # one head, 4 tokens; rows renormalised after dropping key 0
    a = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.5, 0.25, 0.25, 0], [0.2, 0.0, 0.8, 0.0]])[None]
    sums, counts = offset_sums(a)
    # Ã rows: i=1 -> [0,1,0,0]; i=2 -> [0,.5,.5,0]; i=3 -> [0,0,1,0]
    # d=0: Ã[1,1]+Ã[2,2]+Ã[3,3] = 1 + .5 + 0 ; d=1: Ã[2,1]+Ã[3,2] = .5 + 1 ; d=2: Ã[3,1] = 0
    assert sums[0, :3].tolist() == pytest.approx([1.5, 1.5, 0.0])
    assert counts[:3].tolist() == [3, 2, 1]
    p0, p1 = self_and_previous(a)
    assert (p0.item(), p1.item()) == pytest.approx((1.5 / 3, 1.5 / 2))
    # PDS against its own profile P = [.5, .75, 0]: row 2 predicted [.6, .4] vs [.5, .5] (TV .1),
    # row 3 predicted [0, .6, .4] vs [0, 1, 0] (TV .4): PDS = 1 - (.1 + .4) / 2
    assert position_dependence(a, sums / counts.clamp(min=1)).item() == pytest.approx(0.75, abs=1e-6)


def test_rotate_half_pairing():
    x = torch.arange(8.0)  # d = 8 -> pairs (0,4), (1,5), (2,6), (3,7)
    assert rotary_pairs(x, 4).tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize("fixture", ["smollm2", "gemma", "tiny_neox"])
def test_per_pair_terms_sum_to_the_score(request, fixture):
    """sum_p s_ij^(p) (+ non-rotary dims) must equal the model's own pre-softmax score."""
    model = request.getfixturevalue(fixture)
    batch = model.batch(model.tokenize(["Rotary frequencies carry position and content alike."]))
    layer = min(3, model.n_layers - 1)
    keep = lambda x, ctx: x.float()  # noqa: E731
    out = model.run(batch, [Capture(site, site, keep, layers=(layer,)) for site in ("rot_q", "rot_k", "scores")])
    seen = {"q": out["rot_q"][layer], "k": out["rot_k"][layer], "scores": out["scores"][layer]}
    q = seen["q"][0].transpose(0, 1)  # [H, T, d]
    kv_of = [model.card.kv_head_of(h) for h in range(model.n_heads)]
    k = seen["k"][0].transpose(0, 1)[kv_of]
    P = model.card.rotary_dims // 2
    assert (P * 2 < model.d_head) == (fixture == "tiny_neox")  # GPT-NeoX: partial rotary
    terms = pair_scores(q, k, P, model.attention_scaling(layer))  # [H, T, T, P + 1]
    causal = torch.ones(q.shape[1], q.shape[1]).tril().bool()
    torch.testing.assert_close(terms.sum(-1)[:, causal], seen["scores"][0][:, causal], rtol=1e-4, atol=1e-4)


def test_chunked_loss_equals_full_logits_loss(smollm2):
    from posbench.reduce import chunked_nll, next_token_nll

    batch = smollm2.batch(smollm2.tokenize(["Rotary frequencies carry position.", "Short one"]), "left")
    full = next_token_nll(smollm2.forward(batch), batch.input_ids, batch.attention_mask)
    out = smollm2.run(batch, [Capture("nll", "final_norm", lambda h, ctx: chunked_nll(ctx.unembed, h, ctx.batch, chunk=3))])
    total, count = out["nll"]
    assert count == int((batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).sum())
    assert total == pytest.approx(float(full.sum()), rel=1e-5)


# ----------------------------------------------------------------------------- planted heads
def test_planted_previous_token_and_offset3_heads_found_and_nothing_else():
    model = posbench.load_model("tiny-llama")
    plant_offset_head(model, head=0, offset=1)  # kv head 0
    plant_offset_head(model, head=2, offset=3)  # kv head 1
    heads = PositionalHeadsProbe(n_random=4, n_natural=4, n_repeated=2).run(model).tables["heads"]
    flagged = heads[heads["class"].isin(["self", "previous-token", "fixed-offset", "local-window", "first-token"])]
    found = {(int(r.layer), int(r["head"])): (r["class"], int(r.top_offset_random)) for _, r in flagged.iterrows()}
    assert found == {(0, 0): ("previous-token", 1), (0, 2): ("fixed-offset", 3)}
    planted = heads[(heads.layer == 0) & heads["head"].isin([0, 2])]
    assert (planted.top_score_random > 0.95).all() and (planted.content_invariance > 0.99).all()
    assert (planted.pds > 0.99).all()
    assert list(planted.kv_head) == [0, 1]


def test_planted_single_pair_carries_the_score():
    model = posbench.load_model("tiny-llama")
    plant_offset_head(model, head=1, offset=1, strength=12.0, pairs=[0])
    result = RopeUsageProbe(n_sequences=4, band_fractions=()).run(model)
    hp = result.tables["head_pairs"]
    mine = hp[(hp.layer == 0) & (hp["head"] == 1)].set_index("pair")
    assert mine.top_key_share[0] > 0.99 and mine.score_share[0] > 0.99
    assert mine.q_norm.drop(0).abs().max() < 1e-6


# ----------------------------------------------------------------------------- interventions
def _rotary_buffers(model):
    for name, buf in model.hf_model.named_buffers():
        if "rotary_emb" in name and name.endswith("inv_freq") and not name.endswith("original_inv_freq"):
            yield buf


@pytest.mark.parametrize("fixture", ["smollm2", "gemma", "tiny_neox"])
@pytest.mark.parametrize("highest", [False, True])
def test_position_free_equals_inv_freq_zeroed_by_hand(request, fixture, highest):
    model = request.getfixturevalue(fixture)
    batch = model.batch(model.tokenize(["Position shapes what a model does, and we can change it.", "Hi"]), "left")
    iv = RopePositionFree(fraction=0.25, highest=highest)
    with model.intervene(iv):
        edited = model.forward(batch)
    saved = []
    with torch.no_grad():
        for buf in _rotary_buffers(model):
            saved.append((buf, buf.clone()))
            order = torch.argsort(buf, descending=highest)
            buf[order[: round(0.25 * len(buf))]] = 0.0
        by_hand = model.forward(batch)
        for buf, value in saved:
            buf.copy_(value)
    torch.testing.assert_close(edited, by_hand, rtol=0, atol=1e-5)
    assert (edited - model.forward(batch)).abs().max() > 1e-5  # it did change something


@pytest.mark.parametrize("fixture", ["tiny_llama", "smollm2"])
def test_zero_band_equals_q_k_rows_zeroed_by_hand(request, fixture):
    model = request.getfixturevalue(fixture)
    batch = model.batch(model.tokenize(["Which rotary bands matter?"]))
    pairs, layer = [0, 3], 1
    with model.intervene(RopeBandZero(pairs=pairs, layers=[layer])):
        edited = model.forward(batch)
    attn = model.hf_model.model.layers[layer].self_attn
    d, P = model.d_head, model.card.rotary_dims // 2
    dims = pairs + [p + P for p in pairs]
    saved = [(w, w.clone()) for w in (attn.q_proj.weight, attn.k_proj.weight)]
    with torch.no_grad():
        for h in range(model.n_heads):
            attn.q_proj.weight[[h * d + x for x in dims]] = 0.0
        for h in range(model.n_kv_heads):
            attn.k_proj.weight[[h * d + x for x in dims]] = 0.0
        by_hand = model.forward(batch)
        for w, value in saved:
            w.copy_(value)
    torch.testing.assert_close(edited, by_hand, rtol=0, atol=1e-5)


def test_band_intervention_errors_and_specs(tiny_gpt2, tiny_llama, tiny_neox):
    from posbench.registry import parse_intervention

    iv = parse_intervention("rope-position-free:0.25,highest")
    assert (iv.fraction, iv.highest) == (0.25, True)
    iv = parse_intervention("rope-zero-band:pairs=0-2,5;layers=1;heads=3;target=q")
    assert (iv.pairs, iv.layers, iv.heads, iv.target) == ([0, 1, 2, 5], [1], [3], "q")
    with pytest.raises(PosbenchError, match="needs a RoPE model"):
        with tiny_gpt2.intervene(RopePositionFree(fraction=0.5)):
            pass
    with pytest.raises(PosbenchError, match="rotary pair out of range: tiny-llama has 8 pairs"):
        with tiny_llama.intervene(RopeBandZero(pairs=[8])):
            pass
    with pytest.raises(PosbenchError, match="rope-zero-band needs post-RoPE q/k"):
        with tiny_neox.intervene(RopeBandZero(pairs=[0])):
            pass
    with pytest.raises(PosbenchError, match="rope-usage needs a RoPE model"):
        RopeUsageProbe(n_sequences=1).run(tiny_gpt2)


def test_partial_rotary_non_rotary_share(tiny_neox):
    result = RopeUsageProbe(n_sequences=2, band_fractions=()).run(tiny_neox)
    assert result.model_card["rotary_dims"] == 8 and result.tables["pairs"].pair.max() == 3
    shares = result.tables["heads"].score_share_non_rotary
    assert ((shares > 0.05) & (shares < 0.95)).all()  # half the head dims never rotate


def test_any_probe_runs_under_band_interventions(tiny_llama):
    iv = RopePositionFree(fraction=0.5)
    result = PositionalHeadsProbe(n_random=2, n_natural=2, n_repeated=1).run(tiny_llama, interventions=[iv])
    assert result.interventions == [iv.describe()] and "rope-position-free" in result.title()


# ----------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def embedded_positional(embedded):
    return embedded, PositionalHeadsProbe().run(embedded), RopeUsageProbe().run(embedded)


@pytest.mark.embedded
def test_previous_token_heads_on_embedded_models(embedded_positional):
    model, pos, _ = embedded_positional
    heads = pos.tables["heads"]
    prev = heads[heads["class"] == "previous-token"]
    assert len(prev) >= 2, "both models have previous-token heads"
    assert (prev.content_invariance > heads.content_invariance.median()).all()
    assert prev.pds.mean() > heads.pds.mean() + 0.2
    assert (heads["class"] == "first-token").mean() > 0.5  # sinks dominate, as the sink probe says


@pytest.mark.embedded
def test_rope_usage_against_barbero_et_al(embedded_positional):
    """Round and Round We Go (Gemma-7B): q/k norm sits in the low frequencies; positional heads
    draw their score from the high frequencies; p-RoPE can drop the lowest band, not the highest."""
    model, _, rope = embedded_positional
    s, heads, effects = rope.summary, rope.tables["heads"], rope.tables["band_effects"].set_index("condition")
    assert s["q_norm_share_lowest_quarter"] > s["q_norm_share_highest_quarter"]
    pos, content, sink = (heads[heads.kind == k].top_key_share_high_freq.mean() for k in ("positional", "content", "sink"))
    assert pos > 2 * content and content > sink
    low, high = effects.delta_loss["position-free lowest 0.25"], effects.delta_loss["position-free highest 0.25"]
    assert abs(low) < 0.01 and high > 0.5
    assert effects.delta_positional_score["position-free highest 0.25"] < -0.2


@pytest.mark.embedded
def test_gemma_sliding_layers_make_low_frequencies_position_free(gemma):
    result = RopeUsageProbe(n_sequences=1, band_fractions=()).run(gemma)
    pairs = result.tables["pairs"]
    sliding, full = pairs[pairs.layer == 0], pairs[pairs.layer == 5]
    assert (sliding.span == 512).all() and (sliding.rope_base == 1e4).all() and (full.rope_base == 1e6).all()
    # a 10k-base pair whose wavelength far exceeds 512 tokens barely turns inside the window
    assert sliding[sliding.wavelength > 16 * 512].position_free_in_span.all()
    assert sliding.position_free_in_span.sum() > 20


MEMORY_RUN = textwrap.dedent(
    """
    import resource, posbench
    from posbench.data import natural_texts
    from posbench.probes.rope_usage import RopeUsageProbe
    model = posbench.load_model("gemma-3-270m")
    model.run(model.batch(model.tokenize(["warm up"])))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    RopeUsageProbe(seq_len=4096, n_sequences=1, batch_size=1, band_fractions=()).run(model, data=[" ".join(natural_texts())])
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - base)
    """
)


@pytest.mark.embedded
def test_4k_tokens_on_gemma_stay_far_below_the_full_attention_cache():
    done = subprocess.run([sys.executable, "-c", MEMORY_RUN], capture_output=True, text=True, check=True)
    growth_mib = float(done.stdout.strip().splitlines()[-1])
    full_cache_mib = 18 * 4 * 4096 * 4096 * 4 / 2**20  # layers x heads x T^2 fp32 = 4608 MiB
    assert growth_mib < 0.5 * full_cache_mib
