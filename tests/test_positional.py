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
from posbench.reduce import (offset_sums, offset_sums_rows, pair_scores, position_dependence, position_dependence_rows,
                             rotary_pairs, row_jsd, self_and_previous)


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


def _causal_rows(heads: int, length: int, seed: int) -> torch.Tensor:
    """Random causal softmax rows [H, L, L] with sharp and flat heads, one head that puts all of a
    few rows on key 0 (rows the renormalisation must drop) and exact zeros past each query."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(heads, length, length, generator=gen) * torch.tensor([0.5, 3.0, 12.0])[:heads, None, None]
    scores[2, ::5, 0] = 1e4
    return torch.softmax(scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf")), -1)


def test_chunked_row_statistics_equal_gather_based_reference():
    """The offset-aligned (strided view) offset sums and PDS, and the three-logarithm JSD, against
    the direct definitions (index gathers, xlogy of ratios) on chunks that start mid-block."""
    rows, other = _causal_rows(3, 40, 0), _causal_rows(3, 40, 1)
    rest = (1 - rows[..., 0]).clamp(min=1e-6)
    norm = (rows / rest[..., None]).index_fill(-1, torch.tensor([0]), 0.0) * (rest > 1e-6)[..., None]
    keys, width = torch.arange(40), 40
    profile = torch.rand(3, width)
    for first, n in ((0, 7), (1, 1), (2, 9), (13, 16), (30, 10)):
        chunk, queries = rows[:, first : first + n], torch.arange(first, first + n)
        delta = queries[:, None] - keys[None, :]
        expected = torch.zeros(3, width)
        for d in range(width):
            expected[:, d] = (norm[:, first : first + n] * ((delta == d) & (keys >= 1))).sum((-1, -2))
        for kept in (width, 5):  # every offset, and only the first few
            torch.testing.assert_close(offset_sums_rows(chunk, first, kept), expected[:, :kept], rtol=1e-6, atol=1e-6)
        allowed = (delta >= 0) & (keys[None, :] >= 1)
        pred = profile[:, delta.clamp(0, width - 1)] * allowed
        pred = pred / pred.sum(-1, keepdim=True).clamp(min=1e-12)
        tv = 0.5 * (norm[:, first : first + n] - pred).abs().sum(-1)
        use = (queries >= 2) & (rest[:, first : first + n] > 1e-6)
        got_tv, got_n = position_dependence_rows(chunk, first, profile)
        torch.testing.assert_close(got_tv, (tv * use).sum(-1), rtol=1e-5, atol=1e-6)
        assert got_n.tolist() == use.sum(-1).float().tolist()
    a, b = rows, other
    m = (0.5 * (a + b)).clamp(min=torch.finfo(a.dtype).tiny)
    direct = 0.5 * (torch.special.xlogy(a, a) - torch.special.xlogy(a, m) + torch.special.xlogy(b, b)
                    - torch.special.xlogy(b, m)).sum(-1) / math.log(2)
    torch.testing.assert_close(row_jsd(a, b), direct.clamp(min=0), rtol=1e-5, atol=1e-6)



def test_windowed_offset_statistics_equal_the_full_width_ones():
    """On a sliding-window layer the folds copy and read only offsets < window: offset sums, PDS
    (whose prediction keeps mass past the window, counted from the profile's cumulative sum) and
    the paired JSD equal the full-width computation on rows that are zero past the window."""
    from posbench.head_statistics import OffsetProfile
    from posbench.reduce import offset_aligned, offset_sums_aligned, position_dependence_aligned
    from posbench.sites import Context, ModelFacts

    window, length = 6, 40
    keys = torch.arange(length)
    inside = (keys[:, None] - keys[None, :] < window) & (keys[:, None] >= keys[None, :])
    rows = torch.stack([(_causal_rows(3, length, s) + 1e-3) * inside for s in (0, 1)])
    rows = rows / rows.sum(-1, keepdim=True)
    profile = torch.rand(3, length)  # mass past the window too: the predicted rows keep it
    for first, n in ((0, 7), (2, 9), (13, 16), (30, 10)):
        chunk = rows[0, :, first : first + n, : first + n]
        full, ok = offset_aligned(chunk, first)
        cut, ok_cut = offset_aligned(chunk, first, window)
        torch.testing.assert_close(offset_sums_aligned(cut, window), offset_sums_aligned(full, window))
        tv_full, n_full = position_dependence_aligned(full, ok, first, profile)
        tv_cut, n_cut = position_dependence_aligned(cut, ok_cut, first, profile)
        torch.testing.assert_close(tv_cut, tv_full, rtol=1e-5, atol=1e-6)
        assert n_cut.tolist() == n_full.tolist()

    class Batch:  # two right-padded-free sequences of one length
        size, offsets, lengths = 2, torch.tensor([0, 0]), torch.tensor([length, length])

    def fold(windows):
        facts = ModelFacts(n_layers=1, n_heads=3, n_kv_heads=3, d_head=4, n_pairs=2, scaling=(1.0,),
                           sliding_windows=windows)
        ctx = Context(Batch(), 0, facts)
        stats = {}
        for reference, paired in ((profile[None], False), (None, True)):
            stat = OffsetProfile(length, reference=reference, paired=paired)
            state = stat.start(ctx)
            for start in range(0, length, 16):
                state = stat.update(state, rows[:, :, start : start + 16], start, ctx)
            stats[paired] = stat.finish(state, ctx)
        return stats

    windowed, full = fold((window,)), fold((None,))
    for paired in (False, True):
        for got, want in zip(windowed[paired], full[paired]):
            for key in want:
                if want[key] is not None:
                    torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert windowed[False][0]["pds"].shape == (3,) and windowed[True][0]["jsd"].shape == (3,)


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
    flagged = heads[heads[["self", "previous_token", "fixed_offset", "local_window", "sink"]].any(axis=1)]
    found = {(int(r.layer), int(r.head)): (r.primary, int(r.offset)) for r in flagged.itertuples()}
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
    assert mine.q_energy_share[0] == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(scope="module")
def high_band_head():
    """tiny-llama with layer-0 head 1 a previous-token head built only in the highest quarter of
    frequencies (pairs 0-1 of 8), q ~ k there by construction."""
    model = posbench.load_model("tiny-llama")
    plant_offset_head(model, head=1, offset=1, strength=6.0, pairs=[0, 1])
    return model, RopeUsageProbe(n_sequences=4, n_random=4, n_repeated=2).run(model)


def test_head_built_in_one_band_is_recovered_exactly(high_band_head):
    model, result = high_band_head
    heads = result.tables["heads"].set_index(["layer", "head"])
    mine = heads.loc[(0, 1)]
    assert mine.primary == "previous-token" and mine.qk_offset == 1
    assert mine.q_energy_share_high_quarter == pytest.approx(1.0, abs=1e-6)
    assert mine.k_energy_share_high_quarter == pytest.approx(1.0, abs=1e-6)
    assert mine.q_energy_share_low_quarter == pytest.approx(0.0, abs=1e-6)
    # q ~ k by construction: q_i and k_{i-1} parallel in the planted band, score = Cauchy-Schwarz bound
    assert mine.qk_cos_high == pytest.approx(1.0, abs=1e-5)
    assert mine.qk_bound_ratio_high == pytest.approx(1.0, abs=1e-5)
    assert mine.qk_bound_ratio_all == pytest.approx(1.0, abs=1e-5) and mine.qk_score == pytest.approx(mine.qk_bound, rel=1e-5)
    assert math.isnan(mine.qk_cos_low)  # the low band is empty: no direction to compare
    offset_heads = result.tables["heads"][result.tables["heads"].primary.isin(["self", "previous-token", "fixed-offset"])]
    assert [(int(r.layer), int(r.head)) for r in offset_heads.itertuples()] == [(0, 1)]
    # p-RoPE band test: the head lives in the highest band, so freeing the lowest one leaves it exactly
    effects = result.tables["band_effects"].set_index("condition")
    assert effects.delta_positional_score["position-free lowest 0.25"] == pytest.approx(0.0, abs=1e-6)
    assert effects.delta_positional_score["position-free highest 0.25"] < -0.5


def test_energy_shares_against_raw_q(tiny_neox):
    """q energy shares from the probe against |q_p|^2 / |q|^2 computed by hand from the rotated q
    (partial rotary: half the head never rotates and gets its own share), per pair and per quarter
    of frequencies, and against the unsquared norm shares the probe no longer reports."""
    from posbench.data import natural_sequences, natural_texts

    result = RopeUsageProbe(n_sequences=2, n_random=2, n_repeated=1, band_fractions=()).run(tiny_neox)
    tokens = natural_sequences(tiny_neox, natural_texts()[:2], 128)
    batch = tiny_neox.batch(tokens)
    layer = 1
    q = tiny_neox.run(batch, [Capture("q", "rot_q", lambda x, ctx: x.float(), layers=(layer,))])["q"][layer]
    q = q[batch.attention_mask.bool()].double()  # [tokens, H, d]
    P = tiny_neox.card.rotary_dims // 2
    pair_norm = torch.stack([torch.stack([q[..., p], q[..., p + P]], -1).norm(dim=-1) for p in range(P)], -1)
    energy = torch.cat([pair_norm.square(), q[..., 2 * P :].square().sum(-1, keepdim=True)], -1).sum(0)  # [H, P + 1]
    share = energy / q.square().sum(-1).sum(0)[:, None]  # shares of the head's |q|^2: they sum to 1
    assert torch.allclose(share.sum(-1), torch.ones(len(share), dtype=share.dtype))
    freq = tiny_neox.rotary_inv_freq(layer)
    low, high = int(freq.argmin()), int(freq.argmax())  # 4 pairs: a quarter is one pair
    heads = result.tables["heads"]
    mine = heads[heads.layer == layer].sort_values("head")
    for column, expected in (("q_energy_share_non_rotary", share[:, P]), ("q_energy_share_low_quarter", share[:, low]),
                             ("q_energy_share_high_quarter", share[:, high])):
        torch.testing.assert_close(torch.tensor(mine[column].to_numpy()), expected, rtol=1e-4, atol=1e-5)
    hp = result.tables["head_pairs"]
    hp = hp[hp.layer == layer].sort_values(["head", "pair"])
    got = torch.tensor(hp.q_energy_share.to_numpy()).reshape(len(share), P)
    torch.testing.assert_close(got, share[:, :P], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(hp.q_norm.to_numpy()).reshape(len(share), P),
                               pair_norm.mean(0), rtol=1e-4, atol=1e-5)  # the unsquared mean pair norm, kept
    unsquared = pair_norm.sum(0) / pair_norm.sum(0).sum(-1, keepdim=True)
    assert (unsquared - share[:, :P] / share[:, :P].sum(-1, keepdim=True)).abs().max() > 0.01  # not the same thing


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


def test_zero_band_equals_q_k_norm_outputs_zeroed_by_hand_on_gemma(gemma):
    """Gemma 3 normalises q and k (RMSNorm) before RoPE: zeroing W_q/W_k rows would change that
    normalisation, so the hand edit that rope-zero-band must equal zeroes the dims of the
    q_norm / k_norm *outputs* (a forward hook on the HF modules)."""
    batch = gemma.batch(gemma.tokenize(["Which rotary bands matter?"]))
    pairs, layer = [0, 3, 100], 5
    with gemma.intervene(RopeBandZero(pairs=pairs, layers=[layer])):
        edited = gemma.forward(batch)
    attn = gemma.hf_model.model.layers[layer].self_attn
    P = gemma.card.rotary_dims // 2
    dims = pairs + [p + P for p in pairs]

    def zero(module, args, out):
        out = out.clone()
        out[..., dims] = 0.0
        return out

    hooks = [getattr(attn, name).original_component.register_forward_hook(zero) for name in ("q_norm", "k_norm")]
    try:
        by_hand = gemma.forward(batch)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(edited, by_hand, rtol=0, atol=1e-5)
    assert (edited - gemma.forward(batch)).abs().max() > 1e-3  # it did change something


def _captured_rot(model, seqs, site):
    """Rotated q or k of every real token, per layer: {layer: [heads, tokens, d]} (a plain capture)."""
    batch = model.batch(seqs)
    out = model.run(batch, [Capture(site, site, lambda x, ctx: x.float())])[site]
    keep = batch.attention_mask.bool()
    return {layer: x[keep].transpose(0, 1) for layer, x in out.items()}


def test_dope_tables_equal_one_shot_entropy_of_captured_keys(tiny_llama):
    from posbench.data import natural_sequences, natural_texts
    from posbench.rope_theory.dope import band_entropy, head_entropy

    result = RopeUsageProbe(n_sequences=3, seq_len=48, n_random=2, n_repeated=1, band_fractions=()).run(tiny_llama)
    keys = _captured_rot(tiny_llama, natural_sequences(tiny_llama, natural_texts()[:3], 48), "rot_k")
    bands, heads = result.tables["dope_bands"], result.tables["dope_heads"]
    for layer, k in keys.items():
        expected = band_entropy(k, tiny_llama.n_pairs)  # [Hkv, P], one shot on all tokens
        mine = bands[(bands.indicator == "k") & (bands.layer == layer)].sort_values(["head", "band"])
        torch.testing.assert_close(torch.tensor(mine.entropy.to_numpy()).reshape(expected.shape), expected.double(),
                                   rtol=1e-6, atol=1e-6)
        h = heads[(heads.indicator == "k") & (heads.layer == layer)].sort_values("head")
        torch.testing.assert_close(torch.tensor(h.entropy.to_numpy()), head_entropy(expected).double(), rtol=1e-6, atol=1e-6)


def test_dope_intervention_is_the_independent_selection_applied_by_rope_zero_band(tiny_llama):
    """Heads ranked by the entropy of keys captured by hand, DoPE's masks for them, applied as
    rope-zero-band specs: the same selection and the same logits as the dope intervention."""
    import pandas as pd

    from posbench.data import natural_sequences, natural_texts
    from posbench.interventions.dope import Dope
    from posbench.registry import parse_intervention
    from posbench.rope_theory.dope import band_entropy, dope_masks, head_entropy, select_heads

    keys = _captured_rot(tiny_llama, natural_sequences(tiny_llama, natural_texts()[:8], 128), "rot_k")
    table = pd.DataFrame([{"layer": layer, "head": h, "indicator": "k", "entropy": float(e)}
                          for layer, k in keys.items() for h, e in enumerate(head_entropy(band_entropy(k, tiny_llama.n_pairs)))])
    masks = dope_masks(select_heads(table, 2, "entropy", "asc"), "by-parts", tiny_llama.card)
    batch = tiny_llama.batch(tiny_llama.tokenize(["DoPE masks the coherent low bands.", "Hi"]), "left")
    iv = Dope(heads=2, variant="by-parts")
    with tiny_llama.intervene(iv):
        dope_logits = tiny_llama.forward(batch)
    assert [(m.layer, m.heads, m.pairs) for m in iv.masks] == [(m.layer, m.heads, m.pairs) for m in masks]
    assert iv.describe()["params"]["masks"] == [m.intervention_spec() for m in masks]
    with tiny_llama.intervene(*[parse_intervention("rope-zero-band:" + m.intervention_spec()) for m in masks]):
        by_specs = tiny_llama.forward(batch)
    torch.testing.assert_close(dope_logits, by_specs, rtol=0, atol=1e-6)
    assert (dope_logits - tiny_llama.forward(batch)).abs().max() > 1e-4
    every_pair = Dope(heads=2, variant="by-all")
    with tiny_llama.intervene(every_pair):
        assert all(m.pairs == tuple(range(tiny_llama.n_pairs)) and m.mode == "zero" for m in every_pair.masks)
    noise = Dope(heads=2, variant="by-gaussian")  # seeded: the same noise on every forward
    with tiny_llama.intervene(noise):
        first, second = tiny_llama.forward(batch), tiny_llama.forward(batch)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert (first - by_specs).abs().max() > 1e-4


def test_dope_specs_and_errors(tiny_gpt2):
    from posbench.registry import parse_intervention

    iv = parse_intervention("dope:heads=5;variant=by-gaussian;metric=trunc_rank_8;order=desc;indicator=q")
    assert (iv.heads, iv.variant, iv.metric, iv.order, iv.indicator) == (5, "by-gaussian", "trunc_rank_8", "desc", "q")
    with pytest.raises(PosbenchError, match="bad option variant='by-some' for intervention 'dope'"):
        parse_intervention("dope:variant=by-some")
    with pytest.raises(PosbenchError, match="unknown option 'head' for intervention 'dope'"):
        parse_intervention("dope:head=3")
    with pytest.raises(PosbenchError, match="bad option metric='rank'.*not a known head score"):
        parse_intervention("dope:metric=rank")
    with pytest.raises(PosbenchError, match="dope needs a RoPE model"):
        with tiny_gpt2.intervene(parse_intervention("dope:heads=1")):
            pass


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
    prev = heads[heads.primary == "previous-token"]
    assert len(prev) >= 2, "both models have previous-token heads"
    assert (prev.content_invariance > heads.content_invariance.median()).all()
    assert prev.pds.mean() > heads.pds.mean() + 0.2
    assert heads.sink.mean() > 0.5  # sinks dominate, as the sink probe says
    # a sink trait no longer hides a mechanism: every induction head is labelled induction, and
    # (on both models) sinks too
    induction = heads[heads.induction]
    assert len(induction) >= 3 and (induction.primary == "induction").all() and induction.sink.mean() > 0.5


@pytest.mark.embedded
def test_rope_usage_against_barbero_et_al(embedded_positional):
    """Round and Round We Go (Gemma-7B): q energy sits in the low frequencies; positional heads
    draw their score from the high frequencies with q ~ k there; at 128 tokens p-RoPE can drop
    the lowest band (which barely turns over that span), not the highest."""
    model, pos, rope = embedded_positional
    s, heads, effects = rope.summary, rope.tables["heads"], rope.tables["band_effects"].set_index("condition")
    assert s["q_energy_share_lowest_quarter"] > 1.3 * s["q_energy_share_highest_quarter"]
    # the same taxonomy as positional-heads (same function on the same kind of data)
    assert heads.primary.value_counts().idxmax() == pos.tables["heads"].primary.value_counts().idxmax() == "sink"
    offset = heads[heads.primary.isin(["self", "previous-token", "fixed-offset"])]
    content, sink = (heads[heads.primary == k].top_key_share_high_freq.mean() for k in ("content", "sink"))
    assert offset.top_key_share_high_freq.mean() > 2 * content and content > sink
    # q ~ k in the high band at the head's own offset, more than other heads and than in the low band
    others = heads[~heads.primary.isin(["self", "previous-token", "fixed-offset", "local-window"])]
    assert offset.qk_cos_high.mean() > others.qk_cos_high.mean() + 0.15
    assert offset.qk_cos_high.mean() > offset.qk_cos_low.mean() + 0.2
    # DoPE: low-entropy (coherent) outlier bands are mostly the slow ones, which cannot turn far in
    # 128 tokens (measured: SmolLM2 0.79, Gemma above 0.9)
    assert s["dope_outliers_in_low_frequency_half"] > 0.75
    low, high = effects.delta_loss["position-free lowest 0.25"], effects.delta_loss["position-free highest 0.25"]
    assert abs(low) < 0.01 and high > 0.5
    assert effects.delta_positional_score["position-free highest 0.25"] < -0.2
    assert effects.max_turn_over_span["position-free lowest 0.25"] < 0.2  # why the lowest band is free here


@pytest.mark.embedded
def test_gemma_sliding_layers_make_low_frequencies_position_free(gemma):
    result = RopeUsageProbe(n_sequences=1, n_random=2, n_repeated=1, band_fractions=()).run(gemma)
    pairs = result.tables["pairs"]
    sliding, full = pairs[pairs.layer == 0], pairs[pairs.layer == 5]
    assert (sliding.context_span == 512).all() and (sliding.rope_base == 1e4).all() and (full.rope_base == 1e6).all()
    # a 10k-base pair whose wavelength far exceeds 512 tokens barely turns inside the window
    assert sliding[sliding.wavelength > 16 * 512].position_free_in_context.all()
    assert sliding.position_free_in_context.sum() > 20
    assert (sliding.span == 128).all()  # the evaluated span: 128 tokens, inside the window
    feasibility = result.tables["base_feasibility"]
    assert feasibility.feasible.all() and set(feasibility.span) == {512, 32768}


MEMORY_RUN = textwrap.dedent(
    """
    import resource, posbench
    from posbench.data import natural_texts
    from posbench.probes.rope_usage import RopeUsageProbe
    model = posbench.load_model("gemma-3-270m")
    model.run(model.batch(model.tokenize(["warm up"])))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    probe = RopeUsageProbe(seq_len=4096, n_sequences=1, n_random=2, n_repeated=1, batch_size=1, band_fractions=())
    probe.run(model, data=[" ".join(natural_texts())])
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - base)
    """
)


@pytest.mark.embedded
def test_4k_tokens_on_gemma_stay_far_below_the_full_attention_cache():
    done = subprocess.run([sys.executable, "-c", MEMORY_RUN], capture_output=True, text=True, check=True)
    growth_mib = float(done.stdout.strip().splitlines()[-1])
    full_cache_mib = 18 * 4 * 4096 * 4096 * 4 / 2**20  # layers x heads x T^2 fp32 = 4608 MiB
    assert growth_mib < 0.5 * full_cache_mib
