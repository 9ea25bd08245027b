"""The p-RoPE band test's bookkeeping at lengths where the low band turns: turn angles over the
*evaluated* span (not the context length), position-free flags from that span, and the long-context
benchmark's table, at modest lengths (the long runs are benchmarks/rope_long_context.py)."""

import importlib.util
import math
from pathlib import Path

import pytest

import posbench
from posbench.data import natural_texts
from posbench.planted import plant_offset_head
from posbench.probes.rope_usage import band_effects, band_turns, pair_table

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "rope_long_context.py"


def _hand_freq(base: float, dim: int, pair: int) -> float:
    return base ** (-2 * pair / dim)


@pytest.mark.embedded
@pytest.mark.parametrize("length", [128, 1000])
def test_turn_over_the_evaluated_span_on_gemma(gemma, length):
    pairs = pair_table(gemma, length)
    d = gemma.card.rotary_dims
    for layer in (0, 5):  # sliding (10k base, 512 window) and global (1M base, 32k context)
        sel = pairs[pairs.layer == layer].set_index("pair")
        window = gemma.card.sliding_windows[layer]
        span = min(length, window) if window else length
        base = gemma.card.rope_bases[layer]
        for p in (0, 40, 96, 127):
            turn = _hand_freq(base, d, p) * (span - 1)
            assert sel.span[p] == span
            assert sel.rotation_over_span[p] == pytest.approx(turn, rel=1e-5)
            assert sel.position_free_in_span[p] == (turn < math.pi / 8)
            context = window or gemma.card.context_length
            assert sel.rotation_over_context[p] == pytest.approx(_hand_freq(base, d, p) * (context - 1), rel=1e-5)


@pytest.mark.embedded
def test_the_lowest_band_is_position_free_at_128_tokens_and_turns_at_4k(smollm2):
    """SmolLM2 (base 100k, 32 pairs): the lowest quarter is pairs 24-31; pair 24 turns
    100000^(-48/64) x (span - 1) rad: 0.023 at 128 tokens, 0.73 at 4096 (> pi/8)."""
    for length, free in ((128, True), (4096, False)):
        turns = band_turns(smollm2, pair_table(smollm2, length), 0.25, highest=False).iloc[0]
        assert turns.pairs_per_layer == 8 and turns.span == length
        assert turns.max_turn_over_span == pytest.approx(_hand_freq(1e5, 64, 24) * (length - 1), rel=1e-5)
        assert turns.min_turn_over_span == pytest.approx(_hand_freq(1e5, 64, 31) * (length - 1), rel=1e-5)
        assert bool(turns.position_free_in_span) == free
        assert turns.context_span == 8192


@pytest.fixture(scope="module")
def planted_high_band():
    model = posbench.load_model("tiny-llama")
    plant_offset_head(model, head=1, offset=1, strength=6.0, pairs=[0, 1])  # the highest quarter of 8 pairs
    return model


def test_band_effects_at_a_modest_length(planted_high_band):
    model, length = planted_high_band, 400
    seq = model.tokenize(["\n\n".join(natural_texts()[:4])])[0][:length]
    pairs = pair_table(model, length)
    effects, turns = band_effects(model, [seq], [(0, 1, 1)], pairs, [0.25])
    effects = effects.set_index("condition")
    low, high = effects.loc["position-free lowest 0.25"], effects.loc["position-free highest 0.25"]
    # tiny-llama: base 10k, 8 pairs; lowest quarter = pairs 6, 7; highest = 0, 1
    assert low.max_turn_over_span == pytest.approx(_hand_freq(1e4, 16, 6) * (length - 1), rel=1e-5)
    assert high.max_turn_over_span == pytest.approx(length - 1, rel=1e-6)
    assert effects.positional_head_score["none"] > 0.95
    assert low.delta_positional_score == pytest.approx(0.0, abs=1e-6)  # the planted head never used that band
    assert high.delta_positional_score < -0.5
    assert set(turns.condition) == {"position-free lowest 0.25", "position-free highest 0.25"}


def test_long_context_benchmark_table(planted_high_band, tmp_path):
    spec = importlib.util.spec_from_file_location("rope_long_context", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tokens = planted_high_band.tokenize([bench.long_text()])[0]
    rows = bench.measure(planted_high_band, 300, [(0, 1, 1)], tokens, 0.25)
    assert [r["condition"] for r in rows] == ["none", "position-free lowest 0.25", "position-free highest 0.25"]
    assert rows[1]["turn_full"] == pytest.approx(_hand_freq(1e4, 16, 6) * 299, rel=1e-5) and rows[1]["span_full"] == 300
    assert rows[1]["position_free_full"] == (rows[1]["turn_full"] < math.pi / 8)
    table = bench.markdown(rows)
    assert table.count("\n") == 2 + len(rows) and "max turn full (rad, span)" in table


def test_loss_by_position_in_chunks_equals_the_full_logits_loss(tiny_llama):
    """band_effects' loss never holds [T, vocab] at once (Gemma-3 at 32k tokens: 34 GB in fp32):
    nll_by_position unembeds a few positions at a time; per position it equals the loss from the
    full logits, left padding undone."""
    import torch

    from posbench.reduce import next_token_nll, nll_by_position
    from posbench.sites import Capture

    texts = ["Rotary frequencies carry position over long spans.", "Short one"]
    batch = tiny_llama.batch(tiny_llama.tokenize(texts), "left")
    full = next_token_nll(tiny_llama.forward(batch), batch.input_ids, batch.attention_mask)  # [B, T-1]
    out = tiny_llama.run(batch, [Capture("nll", "final_norm", lambda h, ctx: nll_by_position(ctx.unembed, h, ctx.batch, chunk=3))])
    sums, counts = out["nll"]
    by_position = torch.zeros_like(sums)
    for row, offset in enumerate(batch.offsets.tolist()):
        real = full[row, offset:]
        by_position[: len(real)] += real
    lengths = batch.attention_mask.sum(1) - 1
    assert counts.tolist() == [float((lengths > t).sum()) for t in range(len(counts))]
    torch.testing.assert_close(sums, by_position, rtol=1e-5, atol=1e-5)
    # every second position only: the same values there, nothing elsewhere (right padding)
    batch = tiny_llama.batch(tiny_llama.tokenize(texts), "right")
    full = next_token_nll(tiny_llama.forward(batch), batch.input_ids, batch.attention_mask)
    out = tiny_llama.run(batch, [Capture("nll", "final_norm", lambda h, ctx: nll_by_position(ctx.unembed, h, ctx.batch, chunk=3, stride=2))])
    sums, counts = out["nll"]
    torch.testing.assert_close(sums[::2], full.sum(0)[::2], rtol=1e-5, atol=1e-5)
    assert counts[1::2].sum() == 0 and sums[1::2].abs().sum() == 0
    assert counts[::2].tolist() == [float((lengths > t).sum()) for t in range(0, len(counts), 2)]


def test_repeated_ngrams_count_what_copying_could_predict():
    spec = importlib.util.spec_from_file_location("rope_long_context", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.repeated_ngram_tokens(list(range(40)), n=4) == 0
    # a 10-token block seen twice: the second copy repeats 10 - 4 + 1 = 7 four-grams
    block = list(range(100, 110))
    assert bench.repeated_ngram_tokens([*block, 1, 2, *block], n=4) == 7
    # the benchmark's text: natural paragraphs, then the language reference, no template prose
    assert bench.long_text().count("Only a handful of the original machines survive today") == 0
