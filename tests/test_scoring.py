"""posbench.scoring against hand computations from full logits and full attention patterns.

The ground truth is the plain forward pass: log p(continuation) summed from ``model.forward``'s
logits over prompt + continuation, and the attention row of the answer position read from the
full pattern. Packed rows, deduplicated one-token rows, chunked unembedding and segment-aware
greedy generation must all reproduce it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posbench.data import KVDataset, MCQDataset, SegmentedPrompt
from posbench.errors import ContextTooLongError, EmptyDataError
from posbench.interventions.head_ablation import HeadAblation
from posbench.interventions.pine import Pine
from posbench.scoring import (
    continuation_ids,
    continuation_logprobs,
    greedy_continuations,
    pack_limit,
    plan_scoring,
)
from posbench.sites import Capture


def hand_logprob(model, prompt: SegmentedPrompt, continuation: str) -> float:
    """log p(continuation | prompt) from the full logits of one unpadded row."""
    ids, _ = model.tokenize_segments(prompt)
    cont = model.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    logits = model.forward(model.batch([ids + cont]))[0].double().log_softmax(-1)
    return float(sum(logits[len(ids) - 1 + j, t] for j, t in enumerate(cont)))


@pytest.fixture(scope="module")
def kv_case():
    row = KVDataset.builtin()[0]
    items = KVDataset.row_items(row, n_segments=2, slots=[0, 1])
    prompts = [it.prompt for it in items]
    # multi-token candidate answers plus two one-token continuations (byte tokenizer: "A" is one byte)
    choices = [list(it.choices) + ["A", "}"] for it in items]
    return prompts, choices


def test_scores_equal_the_hand_computation_packed_and_unpacked(tiny_llama, kv_case):
    prompts, choices = kv_case
    packed = continuation_logprobs(tiny_llama, prompts, choices, pack=True, batch_size=3)
    plain = continuation_logprobs(tiny_llama, prompts, choices, pack=False, batch_size=3)
    assert packed.packed_rows > 0 and packed.rows < plain.rows  # packing really happened
    # one row per multi-token choice; the one-token choices ride on the first row of their prompt
    assert plain.rows == sum(len(c) - 2 for c in choices)
    for i, prompt in enumerate(prompts):
        for j, choice in enumerate(choices[i]):
            want = hand_logprob(tiny_llama, prompt, choice)
            assert plain.logprobs[i][j] == pytest.approx(want, abs=2e-4)
            assert packed.logprobs[i][j] == pytest.approx(want, abs=2e-4)
            assert plain.n_tokens[i][j] == len(continuation_ids(tiny_llama, choice))
    assert plain.prompt_tokens == [len(tiny_llama.tokenize_segments(p)[0]) for p in prompts]


def test_auto_packing_stops_under_an_intervention_and_scores_the_edited_model(tiny_llama, kv_case):
    prompts, choices = kv_case
    ablate = HeadAblation([(0, 1), (1, 2)])
    assert pack_limit(tiny_llama, "auto") is not None
    with tiny_llama.intervene(ablate):
        assert pack_limit(tiny_llama, "auto") is None
        edited = continuation_logprobs(tiny_llama, prompts[:1], choices[:1])
        want = [hand_logprob(tiny_llama, prompts[0], c) for c in choices[0]]
    assert edited.packed_rows == 0
    np.testing.assert_allclose(edited.logprobs[0], want, atol=2e-4)


def test_packed_rows_under_pine_equal_one_row_per_continuation(tiny_llama, kv_case):
    """PINE keeps packed rows (it reads each branch's restarted position ids; the key mask keeps
    the branches apart): packed scores equal one row per continuation and a hand computation
    from the full logits of a segmented row under PINE."""
    prompts, choices = kv_case
    with tiny_llama.intervene(Pine()):
        assert pack_limit(tiny_llama, "auto") is not None
        packed = continuation_logprobs(tiny_llama, prompts, choices, batch_size=3)
        single = continuation_logprobs(tiny_llama, prompts, choices, pack=False, batch_size=3)
        cont = continuation_ids(tiny_llama, choices[1][0])
        batch = tiny_llama.segment_batch([prompts[1]], continuations=[cont])
        logits = tiny_llama.forward(batch)[0].double().log_softmax(-1)
    assert packed.packed_rows > 0 and packed.rows < single.rows
    start = batch.segments[0].length - 1
    assert packed.logprobs[1][0] == pytest.approx(float(sum(logits[start + j, t] for j, t in enumerate(cont))), abs=1e-4)
    for got, want in zip(packed.logprobs, single.logprobs):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    plain = continuation_logprobs(tiny_llama, prompts, choices, batch_size=3)
    assert max(abs(a - b) for p, q in zip(plain.logprobs, packed.logprobs) for a, b in zip(p, q)) > 1e-3  # PINE acted
    clean = [hand_logprob(tiny_llama, prompts[0], c) for c in choices[0]]
    assert max(abs(a - b) for a, b in zip(want, clean)) > 1e-3  # the ablation does change the scores


def test_packing_respects_the_smallest_sliding_window(tiny_llama, monkeypatch):
    monkeypatch.setattr(tiny_llama.card, "sliding_windows", [None, 300])
    assert pack_limit(tiny_llama, True) == 300
    prompts = [SegmentedPrompt("Q: ", ("a\n", "b\n"), "A:")]
    plan = plan_scoring(tiny_llama, prompts, [["x" * 200, "y" * 200]], pack=True)
    assert len(plan.rows) == 2 and all(r.length <= 300 for r in plan.rows)  # 2 branches of 199 do not fit one row
    monkeypatch.setattr(tiny_llama.card, "sliding_windows", [None, None])
    assert len(plan_scoring(tiny_llama, prompts, [["x" * 200, "y" * 200]], pack=True).rows) == 1


def test_chunked_unembedding_changes_nothing(tiny_llama, kv_case, monkeypatch):
    import posbench.scoring as scoring

    prompts, choices = kv_case
    whole = continuation_logprobs(tiny_llama, prompts, choices)
    monkeypatch.setattr(scoring, "UNEMBED_CHUNK", 7)
    chunked = continuation_logprobs(tiny_llama, prompts, choices)
    np.testing.assert_allclose(np.concatenate(chunked.logprobs), np.concatenate(whole.logprobs), atol=1e-6)


def _answer_row_segment_mass(model, prompt) -> np.ndarray:
    """[layers, heads, segments]: the eager pattern's answer row summed over each segment's span."""
    ids, spans = model.tokenize_segments(prompt)
    pattern = model.run(model.segment_batch([prompt]),
                        [Capture("p", "pattern", lambda x, ctx: x[0, :, len(ids) - 1].clone())])["p"]
    return np.stack([torch.stack([pattern[layer][:, s:e].sum(-1) for s, e in spans.segments], -1).numpy()
                     for layer in range(model.n_layers)])


def test_segment_mass_is_the_answer_row_of_the_pattern_summed_over_each_segment(tiny_llama):
    item = MCQDataset.row_items(MCQDataset.builtin()[0])[1]
    scored = continuation_logprobs(tiny_llama, [item.prompt], [list(item.choices)], attention=True)
    want = _answer_row_segment_mass(tiny_llama, item.prompt)
    for layer in range(tiny_llama.n_layers):
        np.testing.assert_allclose(scored.attention[0][layer], want[layer], atol=1e-6)
    assert scored.attention[0].shape == (tiny_llama.n_layers, tiny_llama.n_heads, 4)


@pytest.mark.parametrize("name", ["tiny-llama", "smollm2"])
def test_segment_mass_comes_from_the_attention_kernel_without_pattern_rows(name, tiny_llama, request, monkeypatch):
    """Segment masses are key weights: the fast path takes them from the SDPA call (no pattern
    row is built) and they equal the eager pattern's answer rows summed over each span, for
    several prompts of different lengths in one batch."""
    import posbench.backends.transformer_lens as tl_backend

    model = tiny_llama if name == "tiny-llama" else request.getfixturevalue("smollm2")
    items = MCQDataset.row_items(MCQDataset.builtin()[0])[:2] + MCQDataset.row_items(MCQDataset.builtin()[1])[:1]
    prompts = [it.prompt for it in items]

    def no_rows(*args, **kwargs):
        raise AssertionError("pattern rows built for a key-weights statistic")

    with monkeypatch.context() as patch:
        patch.setattr(tl_backend, "pattern_rows", no_rows)
        patch.setattr(tl_backend, "attention_from_rows", no_rows)
        scored = continuation_logprobs(model, prompts, [list(it.choices) for it in items], attention=True, batch_size=3)
    with model.using_attention("eager"):
        eager = continuation_logprobs(model, prompts, [list(it.choices) for it in items], attention=True, batch_size=3)
    for p, prompt in enumerate(prompts):
        want = _answer_row_segment_mass(model, prompt)
        assert scored.attention[p].shape == want.shape
        np.testing.assert_allclose(scored.attention[p], want, atol=2e-5)
        np.testing.assert_allclose(eager.attention[p], want, atol=2e-5)


def test_greedy_continuations_match_generate_and_see_the_segments(tiny_llama):
    prompts = [it.prompt for it in MCQDataset.row_items(MCQDataset.builtin()[2])[:2]]
    ours = greedy_continuations(tiny_llama, prompts, max_new_tokens=4, batch_size=2)
    ids = [tiny_llama.tokenize_segments(p)[0] for p in prompts]
    assert ours == tiny_llama.generate(ids, max_new_tokens=4)
    seen = []

    class Spy(HeadAblation):  # an intervention that records the layout it is shown
        def edit_batch(self, batch, model):
            seen.append(batch.segments)
            return batch

    with tiny_llama.intervene(Spy([(0, 0)])):
        greedy_continuations(tiny_llama, prompts[:1], max_new_tokens=2)
    assert seen and all(s is not None and len(s[0].segments) == 4 for s in seen)


def test_bad_inputs_fail_before_any_compute(tiny_llama):
    prompt = SegmentedPrompt("Q: ", ("a\n",), "A:")
    with pytest.raises(EmptyDataError):
        continuation_logprobs(tiny_llama, [prompt], [[""]])
    with pytest.raises(EmptyDataError):
        continuation_logprobs(tiny_llama, [prompt], [[]])
    with pytest.raises(ContextTooLongError, match="context is 512"):
        continuation_logprobs(tiny_llama, [SegmentedPrompt("Q: ", ("a" * 600,), "A:")], [[" x"]])


@pytest.mark.embedded
def test_packed_equals_unpacked_on_smollm2(smollm2):
    row = KVDataset.builtin()[1]
    item = KVDataset.row_items(row, n_segments=2, slots=[1])[0]
    packed = continuation_logprobs(smollm2, [item.prompt], [list(item.choices)], pack=True)
    plain = continuation_logprobs(smollm2, [item.prompt], [list(item.choices)], pack=False)
    assert packed.rows == 1 and plain.rows == 2
    np.testing.assert_allclose(packed.logprobs[0], plain.logprobs[0], atol=1e-3)
    assert continuation_ids(smollm2, " A") == smollm2.tokenizer(" A", add_special_tokens=False)["input_ids"]
    assert len(continuation_ids(smollm2, " A")) == 1
