"""posbench.rope_theory: RoPE-base feasibility bounds and DoPE band entropy / truncated rank."""

from __future__ import annotations

import math
import os
import types

import numpy as np
import pandas as pd
import pytest
import torch

from posbench.card import ModelCard, build_card
from posbench.interventions.rope_bands import RopeBandZero
from posbench.rope_theory import (
    GramAccumulator,
    aliasing_bound,
    band_entropy,
    band_entropy_from_gram,
    band_entropy_table,
    band_gram,
    base_feasibility,
    dc_stability_bound,
    dope_masks,
    feasibility_figure,
    gram,
    head_entropy,
    head_score_table,
    lowest_frequency,
    machine_epsilon,
    max_feasible_context,
    outlier_bands,
    precision_bound,
    rope_inv_freq,
    select_heads,
    spectral_share,
    truncated_effective_rank,
    truncated_effective_rank_from_gram,
)

LOG2 = math.log(2.0)
MODELS = os.path.expanduser("~/.cache/posbench/models")


def _card(**kw) -> ModelCard:
    n_layers = kw.pop("n_layers", 2)
    base = dict(
        model_id="hand", source="test", architecture="LlamaForCausalLM", n_layers=n_layers, n_heads=4, n_kv_heads=2,
        head_dim=64, d_model=256, vocab_size=100, position_encoding="rope", rope_bases=[1e5] * n_layers,
        rotary_dims=64, rope_types=["default"] * n_layers, layer_types=["full_attention"] * n_layers,
        sliding_windows=[None] * n_layers, context_length=8192,
    )
    base.update(kw)
    return ModelCard(**base)


def _card_from_config(name: str) -> ModelCard:
    """The real card of an embedded model, built offline from its cached config (no weights)."""
    folder = os.path.join(MODELS, name)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        pytest.skip(f"{folder} is not cached")
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    hf_model = types.SimpleNamespace(
        config=config, named_modules=lambda: iter([("model.rotary_emb", None)]), parameters=lambda: iter([torch.zeros(1)])
    )

    class Tok:
        bos_token_id, bos_token, chat_template = None, None, None

        def __call__(self, text):
            return {"input_ids": [5]}

    return build_card(name, "cached config", hf_model, Tok())


# ============================================================================ base bounds: hand cases

def test_bounds_paper_convention_hand_values():
    L = 8192
    assert aliasing_bound(L) == pytest.approx(L / (2 * math.pi))
    assert dc_stability_bound(L, eps=0.95) == pytest.approx(L / math.acos(0.95))  # 25796.66
    assert dc_stability_bound(L, eps=0.95) == pytest.approx(25796.665, rel=1e-6)
    assert dc_stability_bound(L, eps=0.95, depth=30) == pytest.approx(L / math.acos(0.95 ** (1 / 30)))
    assert precision_bound("float32") == pytest.approx(2.0 ** 23)  # ~8.39e6, the "precision wall"
    assert precision_bound(torch.bfloat16) == pytest.approx(2.0 ** 7)
    assert precision_bound("float16") == pytest.approx(2.0 ** 10)
    assert machine_epsilon("torch.float64") == pytest.approx(2.0 ** -52)


def test_bounds_exact_convention_is_the_paper_bound_to_the_power_d_over_d_minus_2():
    L, d = 4096, 64
    p = d / (d - 2)
    assert aliasing_bound(L, d, "exact") == pytest.approx((L / (2 * math.pi)) ** p)
    assert dc_stability_bound(L, 0.9, 4, d, "exact") == pytest.approx((L / math.acos(0.9 ** 0.25)) ** p)
    assert precision_bound("float32", d, "exact") == pytest.approx(2.0 ** (23 * p))
    # the exact omega_min is HF's last inv_freq
    assert lowest_frequency(1e4, d, "exact") == pytest.approx(rope_inv_freq(1e4, d)[-1])
    assert lowest_frequency(1e4) == pytest.approx(1e-4)


def test_bounds_are_the_defining_conditions():
    """At the bound the defining condition holds with equality, on either side it flips."""
    L, d = 2048, 128
    for conv in ("paper", "exact"):
        b = aliasing_bound(L, d, conv)
        assert lowest_frequency(b, d, conv) * L == pytest.approx(2 * math.pi)
        assert lowest_frequency(b * 1.01, d, conv) * L < 2 * math.pi
        b = dc_stability_bound(L, 0.95, 12, d, conv)
        assert math.cos(lowest_frequency(b, d, conv) * L) ** 12 == pytest.approx(0.95)
        assert math.cos(lowest_frequency(b * 1.01, d, conv) * L) ** 12 > 0.95
        b = precision_bound("float32", d, conv)
        assert lowest_frequency(b, d, conv) == pytest.approx(machine_epsilon("float32"))


def test_depth_tightens_and_dc_dominates_aliasing():
    bounds = [dc_stability_bound(1000, 0.95, n) for n in (1, 2, 8, 32)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]
    assert dc_stability_bound(1000) > aliasing_bound(1000)  # arccos(0.95) < 2*pi


def test_max_feasible_context_closes_the_interval():
    lmax = max_feasible_context(eps=0.95, depth=1)
    assert lmax == pytest.approx(math.acos(0.95) * 2.0 ** 23)  # ~2.66M tokens in FP32
    assert dc_stability_bound(lmax) == pytest.approx(precision_bound())
    assert max_feasible_context(depth=32) < 1e6  # the paper's "precision wall" below 1M tokens


@pytest.mark.parametrize("bad", [dict(span=0), dict(eps=1.0), dict(eps=0.0), dict(depth=0)])
def test_bound_argument_checks(bad):
    args = dict(span=100, eps=0.95, depth=1) | bad
    with pytest.raises(ValueError):
        dc_stability_bound(args["span"], args["eps"], args["depth"])


def test_exact_convention_needs_rotary_dim_and_unknown_dtype_fails():
    with pytest.raises(ValueError):
        aliasing_bound(100, None, "exact")
    with pytest.raises(ValueError):
        aliasing_bound(100, 64, "nope")
    with pytest.raises(ValueError):
        machine_epsilon("float99")
    with pytest.raises(ValueError):
        machine_epsilon(torch.int32)


# ============================================================================ base_feasibility on cards

def test_base_feasibility_hand_card_groups_and_spans():
    card = _card(
        n_layers=6, rope_bases=[1e4, 1e4, 1e6, 1e4, 1e4, 1e6], head_dim=128, rotary_dims=128,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        sliding_windows=[1024, 1024, None] * 2, context_length=65536,
    )
    table = base_feasibility(card, eps=0.9, depth=3)
    assert len(table) == 2
    local, glob = table.iloc[0], table.iloc[1]
    assert (local.layer_type, local.base, local.span, local.span_source) == ("sliding_attention", 1e4, 1024, "sliding_window")
    assert (glob.layer_type, glob.base, glob.span, glob.span_source) == ("full_attention", 1e6, 65536, "context_length")
    assert local.layers == [0, 1, 3, 4] and glob.layers == [2, 5]
    assert glob.dc_depth_bound == pytest.approx(65536 / math.acos(0.9 ** (1 / 3)))
    assert glob.lower_bound == pytest.approx(max(glob.aliasing_bound, glob.dc_depth_bound))
    assert glob.upper_bound == pytest.approx(2.0 ** 23)
    assert glob.margin_log10 == pytest.approx(min(math.log10(1e6 / glob.lower_bound), math.log10(2.0 ** 23 / 1e6)))
    assert glob.feasible == (glob.lower_bound <= 1e6 < glob.upper_bound)


def test_base_feasibility_flags_a_too_small_and_a_too_large_base():
    small = base_feasibility(_card(rope_bases=[1e3, 1e3], context_length=32768), depth=1).iloc[0]
    assert not small.feasible and small.aliasing_margin_log10 < 0 and small.margin_log10 < 0
    large = base_feasibility(_card(rope_bases=[1e8, 1e8], context_length=4096), depth=1).iloc[0]
    assert not large.feasible and large.precision_margin_log10 < 0 and large.dc_margin_log10 > 0
    bf16 = base_feasibility(_card(), dtype="bfloat16").iloc[0]
    assert bf16.upper_bound == pytest.approx(128) and not bf16.feasible


def test_base_feasibility_non_rope_and_missing_span():
    gpt2 = _card(position_encoding="learned_absolute", rope_bases=[None, None])
    empty = base_feasibility(gpt2)
    assert empty.empty and "margin_log10" in empty.columns
    with pytest.raises(ValueError):
        base_feasibility(_card(context_length=None))


def test_feasibility_figure_has_a_log_axis_and_one_base_marker_per_row():
    table = base_feasibility(_card(n_layers=3, rope_bases=[1e4, 1e4, 1e6], layer_types=["sliding_attention"] * 2 + ["full_attention"],
                                   sliding_windows=[512, 512, None]))
    fig = feasibility_figure(table)
    assert fig.layout.xaxis.type == "log"
    assert "float32" in fig.layout.title.text and "depth N=3" in fig.layout.title.text
    base_trace = [t for t in fig.data if t.name == "model base"][0]
    assert list(base_trace.x) == list(table["base"])
    assert len(feasibility_figure(table.iloc[:0]).data) == 0


def test_smollm2_card_from_cached_config():
    card = _card_from_config("smollm2-135m-instruct")
    assert (card.rotary_dims, card.context_length, set(card.rope_bases)) == (64, 8192, {1e5})
    table = base_feasibility(card)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.span, row.n_layers, row.depth) == (8192, 30, 30)
    # 100k sits 1.88 decades above the aliasing bound (1304) and 0.59 above DC stability (25.8k) ...
    assert row.aliasing_bound == pytest.approx(1303.797, rel=1e-6)
    assert row.aliasing_margin_log10 == pytest.approx(1.885, abs=1e-3)
    assert row.dc_margin_log10 == pytest.approx(0.588, abs=1e-3)
    # ... but 0.15 decades below the depth-compounded bound for 30 layers (140k): outside the zone.
    assert row.dc_depth_bound == pytest.approx(140129, rel=1e-4)
    assert row.dc_depth_margin_log10 == pytest.approx(-0.147, abs=1e-3)
    assert not row.feasible
    assert base_feasibility(card, depth=1).iloc[0].feasible


def test_gemma3_card_from_cached_config():
    card = _card_from_config("gemma-3-270m")
    table = base_feasibility(card)
    assert list(table["layer_type"]) == ["sliding_attention", "full_attention"]
    local, glob = table.iloc[0], table.iloc[1]
    assert (local.base, local.span, local.n_layers) == (1e4, 512, 15)
    assert (glob.base, glob.span, glob.n_layers) == (1e6, 32768, 3)
    assert local.feasible and glob.feasible
    assert local.dc_depth_bound == pytest.approx(6785.3, rel=1e-4)
    assert glob.dc_depth_bound == pytest.approx(434257, rel=1e-4)
    assert glob.precision_margin_log10 == pytest.approx(0.924, abs=1e-3)


# ============================================================================ DoPE: band entropy

def _isotropic_band(n: int, seed: int = 0) -> torch.Tensor:
    """n points exactly isotropic in a plane: angles evenly spread over the circle."""
    phi = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n) + 0.1 * seed
    return torch.stack([torch.cos(phi), torch.sin(phi)], dim=-1)


def _place(band_xy: torch.Tensor, band: int, n_pairs: int, d: int | None = None) -> torch.Tensor:
    """Put [N, 2] band coordinates into HF rotate-half dims (band, band + n_pairs) of [N, d]."""
    d = d or 2 * n_pairs
    x = torch.zeros(band_xy.shape[0], d, dtype=torch.float64)
    x[:, band], x[:, band + n_pairs] = band_xy[:, 0], band_xy[:, 1]
    return x


def test_band_entropy_isotropic_is_log2_and_rank1_is_zero():
    n_pairs = 4
    x = _place(_isotropic_band(16), 0, n_pairs) + _place(3.0 * _isotropic_band(16, 1), 1, n_pairs)
    t = torch.linspace(-2, 2, 16, dtype=torch.float64)
    x += _place(torch.stack([t, 0.5 * t], -1), 2, n_pairs)  # rank 1, not axis-aligned
    x += _place(torch.stack([t, torch.zeros_like(t)], -1), 3, n_pairs)  # rank 1, on an axis
    h = band_entropy(x, n_pairs)
    assert h.shape == (n_pairs,)
    assert h[0].item() == pytest.approx(LOG2, abs=1e-12)
    assert h[1].item() == pytest.approx(LOG2, abs=1e-12)  # scale-free (trace-normalised)
    assert h[2].item() == pytest.approx(0.0, abs=1e-7)
    assert h[3].item() == pytest.approx(0.0, abs=1e-12)


def test_band_entropy_known_spectrum_and_pairing():
    # Gram eigenvalues 3 and 1 (p = 3/4, 1/4) in a rotated frame
    r = torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]], dtype=torch.float64)
    g = r @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ r.T
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert band_entropy_from_gram(g).item() == pytest.approx(expected, abs=1e-12)
    # the pair is (k, k + d/2): data on dims (0, 1) of a d=4 head is two rank-1 bands, not one isotropic band
    phi = _isotropic_band(8)
    x = torch.zeros(8, 4, dtype=torch.float64)
    x[:, 0], x[:, 1] = phi[:, 0], phi[:, 1]
    assert band_entropy(x, 2).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    x2 = torch.zeros(8, 4, dtype=torch.float64)
    x2[:, 0], x2[:, 2] = phi[:, 0], phi[:, 1]
    assert band_entropy(x2, 2)[0].item() == pytest.approx(LOG2)


def test_band_entropy_matches_eigendecomposition_on_random_data_and_batches_heads():
    torch.manual_seed(0)
    x = torch.randn(3, 50, 16) * torch.rand(16) * 5  # [H, N, d], anisotropic
    h = band_entropy(x, 8)
    assert h.shape == (3, 8)
    g = band_gram(x, 8)
    lam = torch.linalg.eigvalsh(g)
    p = lam / lam.sum(-1, keepdim=True)
    ref = -(p * p.log()).sum(-1)
    assert torch.allclose(h, ref, atol=1e-10)
    assert ((h >= 0) & (h <= LOG2 + 1e-12)).all()
    assert head_entropy(h).shape == (3,)
    assert torch.allclose(head_entropy(h), ref.mean(-1))


def test_band_entropy_zero_band_is_nan_and_skipped_in_the_head_mean():
    x = _place(_isotropic_band(8), 1, 3)
    h = band_entropy(x, 3)
    assert torch.isnan(h[0]) and torch.isnan(h[2]) and h[1].item() == pytest.approx(LOG2)
    assert head_entropy(h).item() == pytest.approx(LOG2)


def test_band_entropy_partial_rotary_ignores_pass_through_dims():
    n_pairs, d = 2, 6  # 4 rotary dims + 2 pass-through
    x = _place(_isotropic_band(12), 0, n_pairs, d) + _place(_isotropic_band(12, 2), 1, n_pairs, d)
    x[:, 4:] = 100.0
    assert band_entropy(x, n_pairs).tolist() == pytest.approx([LOG2, LOG2])


# ============================================================================ DoPE: truncated effective rank

def _with_gram(eigs: list[float], n: int = 32, seed: int = 0) -> torch.Tensor:
    """x [n, d] whose Gram xᵀx has exactly the eigenvalues ``eigs`` (in a random basis)."""
    gen = torch.Generator().manual_seed(seed)
    d = len(eigs)
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(eigs, dtype=torch.float64).sqrt()) @ v.T


def test_truncated_effective_rank_known_eigenvalues():
    x = _with_gram([4.0, 2.0, 1.0, 1.0, 0.0, 0.0])
    assert torch.allclose(gram(x), gram(x).T)
    p2 = [2 / 3, 1 / 3]
    assert truncated_effective_rank(x, 2).item() == pytest.approx(math.exp(-sum(p * math.log(p) for p in p2)))
    assert truncated_effective_rank(x, 4).item() == pytest.approx(2 ** 1.75)  # p = 1/2, 1/4, 1/8, 1/8
    assert truncated_effective_rank(x, 6).item() == pytest.approx(2 ** 1.75)  # zero eigenvalues add nothing
    assert truncated_effective_rank(x, 64).item() == pytest.approx(2 ** 1.75)  # r > d uses all d
    assert truncated_effective_rank(x, 1).item() == pytest.approx(1.0)  # Eq. 30 at r = 1 is constant
    assert spectral_share(gram(x)).item() == pytest.approx(0.5)
    iso = _with_gram([1.0] * 8)
    for r in (1, 2, 4, 8):
        assert truncated_effective_rank(iso, r).item() == pytest.approx(r)
    with pytest.raises(ValueError):
        truncated_effective_rank(x, 0)


def test_truncated_effective_rank_is_scale_free_and_batched():
    torch.manual_seed(1)
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    rho = truncated_effective_rank(x, 4)
    assert rho.shape == (2,)
    assert torch.allclose(truncated_effective_rank(7.0 * x, 4), rho)
    assert torch.allclose(truncated_effective_rank_from_gram(gram(x) / torch.diagonal(gram(x), dim1=-2, dim2=-1).sum(-1)[:, None, None], 4), rho)
    assert torch.isnan(truncated_effective_rank(torch.zeros(5, 4), 2))


def test_planted_head_whose_keys_live_in_one_band():
    """Head 1 of 3 carries its keys in band 5 only; heads 0 and 2 are isotropic Gaussian."""
    torch.manual_seed(2)
    n, d, n_pairs = 400, 32, 16
    x = torch.randn(3, n, d, dtype=torch.float64)
    x[1] = _place(torch.randn(n, 2, dtype=torch.float64), 5, n_pairs)
    rho = truncated_effective_rank(x, 16)
    assert rho[1].item() == pytest.approx(2.0, abs=0.05)  # two live directions
    assert rho[0].item() > 14 and rho[2].item() > 14
    h = band_entropy(x, n_pairs)
    assert h[1, 5].item() > 0.68 and torch.isnan(h[1, :5]).all()
    # and a coherent (rank-1, the paper's "spike") band in an otherwise isotropic head
    y = torch.randn(n, d, dtype=torch.float64)
    t = 20 * torch.randn(n, dtype=torch.float64)
    y += _place(torch.stack([t, 0.3 * t], -1), 9, n_pairs)
    hy = band_entropy(y, n_pairs)
    assert hy[9].item() < 0.05 and (torch.cat([hy[:9], hy[10:]]) > 0.6).all()
    assert truncated_effective_rank(y, 16).item() < truncated_effective_rank(x[0], 16).item()


# ============================================================================ DoPE: folding over batches

def test_accumulator_fold_equals_one_shot_under_gqa_with_padding():
    torch.manual_seed(3)
    batch, pos, n_kv, d = 3, 11, 2, 16  # keys have n_kv_heads (GQA)
    chunks = [torch.randn(batch, pos, n_kv, d) * torch.linspace(0.1, 3, d) for _ in range(4)]
    masks = [torch.rand(batch, pos) > 0.3 for _ in range(4)]
    acc = GramAccumulator(n_kv, d)
    band_only = GramAccumulator(n_kv, d, full=False)
    for x, m in zip(chunks, masks):
        acc.update_hook(x, m)
        band_only.update_hook(x, m)
    kept = torch.cat([x[m] for x, m in zip(chunks, masks)], dim=0)  # [N, n_kv, d]
    one_shot = kept.permute(1, 0, 2)  # [n_kv, N, d]
    s = acc.finish()
    assert s.n_tokens == int(sum(m.sum() for m in masks)) == one_shot.shape[1]
    assert s.band_entropy.shape == (n_kv, d // 2)
    assert torch.allclose(s.band_entropy, band_entropy(one_shot, d // 2), atol=1e-10)
    assert torch.allclose(band_only.finish().band_entropy, s.band_entropy, atol=1e-10)
    assert torch.allclose(s.head_entropy, head_entropy(band_entropy(one_shot, d // 2)), atol=1e-10)
    for r in (1, 4, 8, 16):
        assert torch.allclose(s.truncated_effective_rank(r), truncated_effective_rank(one_shot, r), atol=1e-9)
    with pytest.raises(ValueError):
        band_only.finish().truncated_effective_rank(4)


def test_accumulator_merge_and_shape_checks():
    torch.manual_seed(4)
    x = torch.randn(2, 30, 8)
    a, b, whole = GramAccumulator(2, 8), GramAccumulator(2, 8), GramAccumulator(2, 8)
    a.update(x[:, :12])
    b.update(x[:, 12:])
    whole.update(x)
    merged = a.merge(b).finish()
    assert torch.allclose(merged.gram, whole.finish().gram)
    with pytest.raises(ValueError):
        GramAccumulator(2, 8).update(torch.randn(3, 5, 8))
    with pytest.raises(ValueError):
        GramAccumulator(2, 8).finish()
    with pytest.raises(ValueError):
        GramAccumulator(2, 8).update(x, mask=torch.ones(3, dtype=torch.bool))
    single = GramAccumulator(1, 8).update(x[0]).finish()
    assert torch.allclose(single.band_entropy[0], band_entropy(x[0], 4), atol=1e-10)


# ============================================================================ DoPE: tables, outliers, selection

def _summaries(seed: int = 5, n_layers: int = 3, n_kv: int = 2, d: int = 16, spike: tuple[int, int, int] | None = (1, 0, 6)):
    torch.manual_seed(seed)
    out = {}
    for layer in range(n_layers):
        acc = GramAccumulator(n_kv, d)
        x = torch.randn(n_kv, 200, d, dtype=torch.float64)
        if spike and spike[0] == layer:
            t = 30 * torch.randn(200, dtype=torch.float64)
            x[spike[1]] += _place(torch.stack([t, -0.4 * t], -1), spike[2], d // 2)
        out[layer] = acc.update(x).finish()
    return out


def test_tables_and_outlier_bands_flag_the_planted_spike():
    summaries = _summaries()
    bands = band_entropy_table(summaries, inv_freq={k: rope_inv_freq(1e4, 16) for k in summaries})
    assert list(bands.columns) == ["layer", "head", "indicator", "band", "entropy", "freq"]
    assert len(bands) == 3 * 2 * 8
    flagged = outlier_bands(bands)
    assert {"median", "mad", "robust_z", "outlier"} <= set(flagged.columns)
    hits = flagged[flagged.outlier]
    assert list(zip(hits.layer, hits["head"], hits.band)) == [(1, 0, 6)]
    assert hits.robust_z.iloc[0] < -3
    heads = head_score_table(summaries, ranks=(4, 8))
    assert list(heads.columns) == ["layer", "head", "indicator", "n_tokens", "entropy", "spectral_share", "trunc_rank_4", "trunc_rank_8"]
    spiked = heads[(heads.layer == 1) & (heads["head"] == 0)].iloc[0]
    assert spiked.entropy == heads.entropy.min() and spiked.trunc_rank_8 == heads.trunc_rank_8.min()


def test_outlier_bands_rules_hand_table():
    table = pd.DataFrame({
        "layer": [0] * 6 + [1] * 4, "head": [0] * 6 + [0] * 4, "band": list(range(6)) + list(range(4)),
        "entropy": [0.69, 0.68, 0.69, 0.67, 0.10, np.nan, 0.6931, 0.6930, 0.6929, 0.6931],
    })
    out = outlier_bands(table, k=3.0, min_drop=0.05)
    assert out.loc[out.layer == 0, "outlier"].tolist() == [False, False, False, False, True, False]
    # an all-isotropic head with MAD ~ 1e-4 flags nothing: min_drop guards rounding noise
    assert not out.loc[out.layer == 1, "outlier"].any()
    assert out.loc[0, "median"] == pytest.approx(0.68)
    zero_mad = pd.DataFrame({"layer": [0] * 4, "head": [0] * 4, "entropy": [0.5, 0.5, 0.5, 0.3]})
    res = outlier_bands(zero_mad)
    assert res.outlier.tolist() == [False, False, False, True] and res.robust_z.iloc[3] == -np.inf


def test_select_heads_is_global_and_ordered():
    table = pd.DataFrame({"layer": [0, 0, 1, 1, 2], "head": [0, 1, 0, 1, 0], "indicator": "q",
                          "entropy": [0.5, 0.2, np.nan, 0.1, 0.4]})
    asc = select_heads(table, 2)
    assert list(zip(asc.layer, asc["head"])) == [(1, 1), (0, 1)] and asc["rank"].tolist() == [0, 1]
    desc = select_heads(table, 3, order="desc")
    assert list(zip(desc.layer, desc["head"])) == [(0, 0), (2, 0), (0, 1)]
    assert len(select_heads(table, 10)) == 4  # NaN never selected
    with pytest.raises(ValueError):
        select_heads(table, 2, metric="trunc_rank_8")
    with pytest.raises(ValueError):
        select_heads(table, 2, order="up")


def test_dope_masks_by_parts_all_gaussian_under_gqa():
    card = _card(n_layers=2, n_heads=6, n_kv_heads=2, head_dim=64, rotary_dims=64, rope_bases=[1e5, 1e5], context_length=8192)
    # k-indicator rows name KV heads: KV head 1 covers query heads 3, 4, 5
    selected = pd.DataFrame({"layer": [1, 0], "head": [1, 0], "indicator": ["k", "k"], "score": [0.1, 0.2]})
    parts = dope_masks(selected, "by-parts", card)
    theta = 2 * math.pi / 8192
    freq = rope_inv_freq(1e5, 64)
    low = tuple(int(i) for i in np.nonzero(freq < theta)[0])
    assert low == tuple(range(20, 32))  # wavelength > 8192 tokens
    assert parts[0].layer == 1 and parts[0].heads == (3, 4, 5) and parts[0].pairs == low and parts[0].mode == "zero"
    assert parts[1].heads == (0, 1, 2)
    assert parts[0].intervention_spec() == "pairs=20-31;layers=1;heads=3-5;target=qk"
    high = dope_masks(selected, "by-parts", card, parts="high", train_length=8192)
    assert high[0].pairs == tuple(range(0, 20))
    short = dope_masks(selected, "by-parts", card, train_length=10)  # theta = 0.628: pairs 0 (1.0), 1 (0.698) stay
    assert short[0].pairs == tuple(range(2, 32))
    every = dope_masks(selected.iloc[:1], "by-all", card)
    assert every[0].pairs == tuple(range(32)) and every[0].mode == "zero"
    gauss = dope_masks(selected.iloc[:1], "by-gaussian", card, target="k")
    assert gauss[0].mode == "gaussian" and gauss[0].target == "k"
    with pytest.raises(ValueError):
        gauss[0].intervention_spec()
    q_rows = pd.DataFrame({"layer": [0], "head": [4], "indicator": ["q"], "score": [0.3]})
    assert dope_masks(q_rows, "by-all", card, target="q")[0].heads == (4,)


def test_dope_masks_need_inv_freq_for_scaled_rope_and_round_trip_into_rope_zero_band():
    card = _card(rope_types=["llama3", "llama3"])
    sel = pd.DataFrame({"layer": [0], "head": [1], "indicator": ["q"], "score": [0.0]})
    with pytest.raises(ValueError):
        dope_masks(sel, "by-parts", card)
    freq = torch.tensor(rope_inv_freq(5e5, 64)) / 8  # any explicit inv_freq works
    mask = dope_masks(sel, "by-parts", card, inv_freq={0: freq}, target="q")[0]
    assert mask.pairs == tuple(int(i) for i in np.nonzero(freq.numpy() < 2 * math.pi / 8192)[0])
    spec = mask.intervention_spec()
    intervention = RopeBandZero.from_spec(spec)
    assert intervention.pairs == list(mask.pairs) and intervention.layers == [0]
    assert intervention.heads == [1] and intervention.target == "q"
    with pytest.raises(ValueError):
        dope_masks(sel, "by-none", card)
