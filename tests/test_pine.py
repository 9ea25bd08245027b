"""PINE against a literal, slow transcription of the authors' algorithm (wzq016/PINE, rotating
with HuggingFace's own rotary module), and its defining property: the suffix and continuation
logits do not depend on the order of the segments."""

import inspect
import itertools

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import rotate_half

import posbench
from posbench.data.segments import SegmentedPrompt
from posbench.data.texts import natural_texts
from posbench.errors import BadOptionError, PosbenchError
from posbench.interventions.pine import Pine, PineNeedsSegmentsError, PineScores
from posbench.interventions.positions import PositionShift, SharedPositions
from posbench.interventions.rope_scaling import PositionInterpolation
from posbench.protocols import ActivationEdit, AttentionEdit
from posbench.registry import parse_intervention
from posbench.sites import AttentionCapture, AttentionOverride, Capture, Edit, HeadPattern
from posbench.zoo import build_tiny

PROMPT = SegmentedPrompt(
    "Read the notes.\n",
    ("Note: the owl is red. ", "Note: a fox runs fast! ", "Note: rain? ", "Note: seven cats sleep here. "),
    "\nWhich animal is red?",
)
SHORT = SegmentedPrompt("Pick:", (" yes.", " no, never.", " maybe"), " Answer:")


# ----------------------------------------------------------------------------- the reference
def _hf_rotary(model):
    """HuggingFace's own rotary module as ``(x, positions, layer) -> (cos, sin)`` (Gemma 3: one
    table per layer type, 10k local / 1M global)."""
    hf = model.hf_model
    rotary = (hf.model if hasattr(hf, "model") else hf.gpt_neox).rotary_emb
    original = getattr(rotary, "_original_component", rotary)  # the bridge wraps HF modules in place
    if "layer_type" in inspect.signature(original.forward).parameters:
        return lambda x, positions, layer: rotary(x, positions, hf.config.layer_types[layer])
    return lambda x, positions, layer: rotary(x, positions)


def _hf_rotate(x, cos, sin):
    r = cos.shape[-1]
    return torch.cat([x[..., :r] * cos + rotate_half(x[..., :r]) * sin, x[..., r:]], dim=-1)


class ReferencePineScores(AttentionOverride):
    """The authors' algorithm for one row at a time, one query token at a time: end-aligned
    documents; a document query ranks the other documents by the summed, length-normalised
    attention of its tokens (own document masked, then set to the maximum), a suffix query by its
    own; stable descending sort; shift = exclusive cumsum of the lengths in rank order; key
    positions all_position_ids - shift; mask key_pos > query_pos (document queries see no suffix)."""

    def __init__(self, model):
        self.rotary = _hf_rotary(model)

    def scores(self, q, k, ctx):
        B, T, H, d = q.shape
        scale = ctx.facts.scaling[ctx.layer]
        out = torch.full((B, H, T, T), torch.finfo(torch.float32).min)
        for b in range(B):
            cols = ctx.batch.real_columns(b)
            span = ctx.batch.segments[b]
            qb = q[b, cols].transpose(0, 1).float()  # [H, L, d]
            kb = k[b, cols].transpose(0, 1).float().repeat_interleave(H // k.shape[2], dim=0)
            L = qb.shape[1]
            P, E = span.prefix[1], span.suffix[0]
            lens = torch.tensor([e - s for s, e in span.segments])
            doc_of = torch.full((L,), -1)
            all_pos = torch.arange(L)
            for i, (s, e) in enumerate(span.segments):
                doc_of[s:e] = i
                all_pos[s:e] = torch.arange(E - (e - s), E)
            n = len(lens)

            def per_doc(weights):  # [H, m, E - P] -> [H, m, n]
                return torch.stack([weights[..., doc_of[P:E] == j].sum(-1) for j in range(n)], -1) / lens

            def shifts(importance):  # [H, n] -> [H, n]
                order = torch.argsort(importance, dim=-1, descending=True, stable=True)
                shift = lens[order].cumsum(-1) - lens[order]
                return shift.gather(-1, torch.argsort(order, dim=-1))

            raw = qb[:, P:E] @ kb[:, P:E].transpose(-1, -2) * scale
            own = doc_of[P:E, None] == doc_of[None, P:E]
            doc2doc = per_doc(torch.softmax(raw.masked_fill(own, torch.finfo(torch.float32).min), -1))  # [H, E-P, n]
            for i in range(L):
                if i < P:
                    key_pos, visible = all_pos[None].expand(H, L), torch.arange(L) <= i
                else:
                    if doc_of[i] >= 0:
                        imp = torch.stack([doc2doc[:, doc_of[P:E] == j].sum(1) for j in range(n)], 1)[:, doc_of[i]]
                        imp[:, doc_of[i]] = torch.finfo(torch.float32).max
                    else:
                        scores = qb[:, i : i + 1] @ kb[:, P:E].transpose(-1, -2) * scale
                        imp = per_doc(torch.softmax(scores, -1))[:, 0]
                    shift = torch.zeros(H, L, dtype=torch.long)
                    shift[:, P:E] = shifts(imp)[:, doc_of[P:E]]
                    key_pos = all_pos[None] - shift
                    visible = key_pos <= all_pos[i]
                    if doc_of[i] >= 0:
                        visible &= torch.arange(L) < E
                cos_q, sin_q = self.rotary(qb, all_pos[i].view(1, 1), ctx.layer)
                cos_k, sin_k = self.rotary(kb, key_pos, ctx.layer)  # [H, L, r]
                qi = _hf_rotate(qb[:, i], cos_q[0, 0], sin_q[0, 0])
                ki = _hf_rotate(kb, cos_k, sin_k)
                row = (ki @ qi[:, :, None]).squeeze(-1) * scale
                out[b, :, cols.start + i, cols] = row.masked_fill(~visible, torch.finfo(torch.float32).min)
        return out


class ReferencePine(AttentionEdit):
    name = None  # not registered: a test double

    def params(self):
        return {}

    def attention_overrides(self, model):
        return [ReferencePineScores(model)]


def _hidden(model, batch, interventions):
    """Final normalised hidden states of every real token, per row (the unembedding's input)."""
    with model.intervene(*interventions):
        out = model.run(batch, [Capture("h", "final_norm", lambda x, ctx: x)])
    return [out.captured["h"][b, batch.real_columns(b)] for b in range(batch.size)]


def _suffix_logits(model, batch, interventions=(Pine(),), hidden=None):
    """Logits of the suffix and continuation tokens of every row (only those are unembedded:
    Gemma's 262k-token unembedding of whole batches dominates these tests otherwise), from
    ``hidden`` when the final hidden states are at hand."""
    hidden = hidden if hidden is not None else _hidden(model, batch, interventions)
    return [model.backend.unembed(h[span.suffix[0] :]) for h, span in zip(hidden, batch.segments)]


ONE = SegmentedPrompt("One:", (" single segment",), "?")


def _reference_case(model):
    if model.card.n_layers > 2:  # the literal reference loops over tokens: short rows on real models
        return [SHORT, ONE], [[5, 6], []]
    return [PROMPT, SHORT, ONE], [[5, 6], [7], []]


@pytest.mark.parametrize(
    "fixture",
    ["tiny_llama", "tiny_neox", pytest.param("smollm2", marks=pytest.mark.embedded),
     pytest.param("gemma", marks=pytest.mark.embedded)],
)
def test_pine_equals_the_authors_algorithm(request, fixture):
    """Covers GQA (tiny-llama 4/2, SmolLM2 9/3, Gemma 3 4/1 query/kv heads: the reference repeats
    each kv head for its query group), q/k-norm (Gemma 3: importance and rotations use the
    normalised q/k; with one segment PINE must be the model itself, which it is only if they do),
    partial rotary dims (tiny-neox) and per-layer RoPE bases (Gemma 3)."""
    model = request.getfixturevalue(fixture)
    prompts, continuations = _reference_case(model)
    batch = model.segment_batch(prompts, "left", continuations=continuations)
    fast, slow, plain = (_hidden(model, batch, ivs) for ivs in ([Pine()], [ReferencePine()], []))
    # hidden states: 1e-4 plus 1e-5 relative (Gemma's final-norm outputs reach hundreds); logits below: 1e-4
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-5, atol=1e-4)
    assert (fast[0] - plain[0]).abs().max() > 1e-3  # PINE changed the multi-segment row
    torch.testing.assert_close(fast[-1], plain[-1], rtol=1e-5, atol=1e-4)  # one segment: PINE is the model
    torch.testing.assert_close(_suffix_logits(model, batch, hidden=fast), _suffix_logits(model, batch, hidden=slow),
                               rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- invariance
def _permuted_suffix_logits(model, orders, continuation, padding_side="left"):
    prompts = [PROMPT.permuted(o) for o in orders]
    return torch.stack(_suffix_logits(model, model.segment_batch(prompts, padding_side, [continuation] * len(prompts))))


def _random_orders(n: int, count: int, seed: int) -> list[list[int]]:
    """``count`` distinct random permutations of ``range(n)`` (seeded)."""
    orders = [list(o) for o in itertools.permutations(range(n))]
    return [orders[i] for i in torch.randperm(len(orders), generator=torch.Generator().manual_seed(seed))[:count].tolist()]


@pytest.mark.parametrize(
    "fixture,sides",
    [("tiny_llama", ("left", "right")), ("tiny_neox", ("left", "right")),
     pytest.param("smollm2", ("left",), marks=pytest.mark.embedded),
     pytest.param("gemma", ("right",), marks=pytest.mark.embedded)],
)
def test_suffix_and_continuation_logits_do_not_depend_on_segment_order(request, fixture, sides):
    """Random permutations of two prompts of different lengths in one padded batch: every
    permutation of a prompt gives the same suffix and continuation logits, while the plain model
    does see the order. PINE runs every row in the canonical content order, so the rows of one
    prompt are the same computation: equal to 1e-6 (0 in practice; rows of one batch are not
    promised the same kernel path), and bitwise equal run as batches of their own."""
    model = request.getfixturevalue(fixture)
    long_orders, short_orders = _random_orders(4, 3, seed=0), _random_orders(3, 2, seed=1)
    prompts = [PROMPT.permuted(o) for o in long_orders] + [SHORT.permuted(o) for o in short_orders]
    answer = model.tokenizer(" The owl", add_special_tokens=False)["input_ids"]
    continuations = [answer] * len(long_orders) + [answer[:1]] * len(short_orders)
    for side in sides:
        batch = model.segment_batch(prompts, side, continuations)
        assert batch.attention_mask.all(1).sum() < batch.size  # padded: the rows differ in length
        logits = _suffix_logits(model, batch)
        for group in (logits[: len(long_orders)], logits[len(long_orders) :]):
            stacked = torch.stack(group)
            torch.testing.assert_close(stacked, stacked[:1].expand_as(stacked), rtol=0, atol=1e-6)
    alone = [_suffix_logits(model, model.segment_batch([p], sides[0], [c]))[0]
             for p, c in zip(prompts[: len(long_orders)], continuations)]
    assert all(torch.equal(a, alone[0]) for a in alone)
    plain = _suffix_logits(model, model.segment_batch(prompts[:2]), [])
    assert (plain[0] - plain[1]).abs().max() > 1e-3  # the plain model does see the order


@pytest.mark.parametrize("fixture", ["tiny_llama", pytest.param("smollm2", marks=pytest.mark.embedded)])
def test_left_right_padding_and_one_at_a_time_agree(request, fixture):
    model = request.getfixturevalue(fixture)
    prompts = [PROMPT, SHORT, SHORT.permuted([2, 0, 1])]
    conts = [[3, 4, 5], [6], [6, 7]]
    per_side = {side: _suffix_logits(model, model.segment_batch(prompts, side, conts)) for side in ("left", "right")}
    for i, prompt in enumerate(prompts):
        alone = _suffix_logits(model, model.segment_batch([prompt], continuations=[conts[i]]))[0]
        torch.testing.assert_close(per_side["left"][i], alone, rtol=0, atol=1e-4)
        torch.testing.assert_close(per_side["right"][i], alone, rtol=0, atol=1e-4)


TWO = SegmentedPrompt("Choose:", (" the red owl", " a fox"), " Which?")


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_neox", "tiny_llama64"])
def test_rows_with_different_numbers_of_segments_share_a_batch(request, fixture):
    """Rows with 4, 2, 1 and 3 segments in one padded batch (the shorter rows carry empty
    segment slots and padding): every real token of every row is what the row gives alone,
    left and right padding, and the one-segment row is the plain model. In fp64 (and bf16) the
    padding queries, which see no key, used to softmax to NaN in the bridge's fp32 softmax and
    poison their row through the pads' values."""
    model = request.getfixturevalue(fixture)
    prompts, conts = [PROMPT, TWO, ONE, SHORT], [[5, 6], [7], [], [8, 9, 10]]
    alone = [_hidden(model, model.segment_batch([p], continuations=[c]), [Pine()])[0] for p, c in zip(prompts, conts)]
    plain = _hidden(model, model.segment_batch([ONE]), [])[0]
    torch.testing.assert_close(alone[2], plain, rtol=0, atol=1e-5)
    for side in ("left", "right"):
        batch = model.segment_batch(prompts, side, conts)
        assert len({len(s.segments) for s in batch.segments}) == 4 and not batch.attention_mask.all()
        together = _hidden(model, batch, [Pine()])
        for row, single in zip(together, alone):
            torch.testing.assert_close(row, single, rtol=0, atol=1e-5)
        torch.testing.assert_close(together[2], plain, rtol=0, atol=1e-5)


def test_identical_segments_tie_and_the_order_still_does_not_matter(tiny_llama):
    """Two identical segments tie exactly in every importance ranking (same tokens, same
    keys); with a third, different one, all six orders give the same suffix and continuation
    logits within 1e-5: the tie-break (content, then slot) is order-invariant, and where it
    falls back to the slot the tied segments are interchangeable."""
    twin = SegmentedPrompt("Notes:", (" the owl is red.", " the owl is red.", " a fox runs fast!"), " Red?")
    orders = [list(o) for o in itertools.permutations(range(3))]
    for side in ("left", "right"):
        batch = tiny_llama.segment_batch([twin.permuted(o) for o in orders], side, [[5, 6]] * len(orders))
        logits = torch.stack(_suffix_logits(tiny_llama, batch))
        torch.testing.assert_close(logits, logits[:1].expand_as(logits), rtol=0, atol=1e-5)


class RecordedPine(Pine):
    """PINE that keeps each layer's segment shifts ([B, H, T, N], in its run order) in ``shifts``."""

    name = None

    def __init__(self):
        self.shifts = {}

    def attention_overrides(self, model):
        outer = self

        class Recorded(PineScores):
            def scores(self, q, k, ctx):
                self.layer = ctx.layer
                return super().scores(q, k, ctx)

            def _shifts(self, raw, layout):
                outer.shifts[self.layer] = super()._shifts(raw, layout)
                return outer.shifts[self.layer]

        return [Recorded(windows=tuple(model.card.sliding_windows), softcap=model.card.attn_logit_softcap)]


def test_many_long_segments_are_one_computation_in_every_order():
    """20 passages of 30 tokens on tiny-llama with a 2048-token context: near-ties within
    rounding are where order invariance broke before (SmolLM2, 20 x 50 tokens: 6.8e-3; here
    1.2% of layer 0's (head, query) rows ranked two near-tied segments the other way round in
    another order). In the canonical order both orders rank alike in every layer, bitwise, and
    the suffix logits are bitwise equal."""
    hf, tokenizer = build_tiny("tiny-llama")
    hf.config.update({"max_position_embeddings": 2048})
    torch.manual_seed(0)
    model = posbench.load_model(LlamaForCausalLM(hf.config).eval(), tokenizer)
    text = " ".join(natural_texts())
    prompt = SegmentedPrompt("Read the passages.\n\n", tuple(text[30 * i : 30 * i + 30] + "\n\n" for i in range(20)),
                             "Question: what is the second passage about?\nAnswer:")
    order = torch.randperm(20, generator=torch.Generator().manual_seed(20)).tolist()
    batches = [model.segment_batch([prompt]), model.segment_batch([prompt.permuted(order)])]
    runs = [RecordedPine(), RecordedPine()]
    logits = [_suffix_logits(model, batch, [run])[0] for batch, run in zip(batches, runs)]
    assert torch.equal(logits[0], logits[1])
    for layer in range(model.n_layers):
        assert torch.equal(runs[0].shifts[layer], runs[1].shifts[layer])
    assert (runs[0].shifts[0] > 0).any()  # the ranking did move segments


class MarkToken(ActivationEdit):
    """Adds a fixed vector to the residual stream of one real-token index per row (layer 0)."""

    name = "mark-token"

    def __init__(self, index: list[int], width: int):
        self.index, self.vector = index, torch.linspace(-1, 1, width)

    def params(self):
        return {"index": self.index}

    def edits(self, model):
        def add(x, ctx):
            x = x.clone()
            for b, i in enumerate(self.index):
                x[b, int(ctx.batch.offsets[b]) + i] += self.vector
            return x

        return [Edit("resid_post", add, (0,))]


def test_per_token_outputs_come_back_in_the_users_order(tiny_llama):
    """Under PINE the model runs the canonical order; every per-token output is handed back in
    the user's order: a per-token capture, a head's whole attention pattern, the logits, and an
    edit placed at a user-order token index all equal those of the canonical-order prompt
    (which runs as it is) with its tokens put into the user's order, bitwise."""
    ids = [tiny_llama.tokenizer(seg, add_special_tokens=False)["input_ids"] for seg in PROMPT.segments]
    canonical = PROMPT.permuted(sorted(range(4), key=lambda s: ids[s]))
    user = canonical.permuted([2, 0, 3, 1])
    (c_ids, c_span), (u_ids, u_span) = tiny_llama.tokenize_segments(canonical), tiny_llama.tokenize_segments(user)
    same = torch.arange(len(u_ids))  # the canonical prompt's index of each user-order token
    for slot, content in enumerate([2, 0, 3, 1]):
        same[slice(*u_span.segments[slot])] = torch.arange(*c_span.segments[content])
    assert [c_ids[i] for i in same] == u_ids and not torch.equal(same, torch.arange(len(u_ids)))
    mark = 3  # a token inside the user's second segment
    marked = u_span.segments[1][0] + mark
    captures = [Capture("resid", "resid_post", lambda x, ctx: x, (1,)), AttentionCapture("head", HeadPattern(1), (1,))]
    outs = {}
    for name, prompt, index in (("user", user, marked), ("canonical", canonical, int(same[marked]))):
        batch = tiny_llama.segment_batch([prompt], "left", [[5, 6]])
        with tiny_llama.intervene(MarkToken([index], tiny_llama.card.d_model), Pine()):
            outs[name] = tiny_llama.run(batch, captures, logits=True)
    u, c = outs["user"], outs["canonical"]
    columns = torch.cat([same, torch.arange(len(u_ids), len(u_ids) + 2)])  # the continuation stays
    assert torch.equal(u["resid"][1][0], c["resid"][1][0, columns])
    assert torch.equal(u["head"][1][0], c["head"][1][0][columns][:, columns])
    assert torch.equal(u.logits[0], c.logits[0, columns])


@pytest.mark.embedded
def test_gemma_sliding_window_in_pine_positions(gemma):
    """With a window shorter than the prompt, PINE applies it in its own positions: one segment
    is still exactly the model (window and all), and the segment order still does not matter."""
    config = gemma.hf_model.config
    saved = (config.sliding_window, list(gemma.card.sliding_windows))
    try:
        config.sliding_window = 6
        gemma.card.sliding_windows = [6 if w else None for w in saved[1]]
        one = gemma.segment_batch([SegmentedPrompt("Notes: ", ("the owl is red, the fox is fast.",), " Red?")])
        with gemma.using_attention("eager"):  # PINE's layers run eager: compare on the same path
            narrow, pine = _suffix_logits(gemma, one, []), _suffix_logits(gemma, one)
        torch.testing.assert_close(pine[0], narrow[0], rtol=0, atol=1e-4)
        logits = _permuted_suffix_logits(gemma, ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]), [])
        torch.testing.assert_close(logits, logits[:1].expand_as(logits), rtol=0, atol=1e-4)
    finally:
        config.sliding_window, gemma.card.sliding_windows = saved[0], saved[1]
    with gemma.using_attention("eager"):
        wide = _suffix_logits(gemma, one, [])[0]
    assert (wide - narrow[0]).abs().max() > 1e-3  # the narrow window did bind while it was set


def test_pine_composes_with_position_and_frequency_edits(tiny_llama):
    """A uniform shift changes nothing; a frequency edit stacked before PINE reaches PINE's
    rotations (PINE reads the layer's edited cos/sin): with one segment PINE + interpolation is
    interpolation alone, and with four the order still does not matter."""
    batch = tiny_llama.segment_batch([PROMPT, SHORT], "left", continuations=[[5], [6, 7]])
    torch.testing.assert_close(_suffix_logits(tiny_llama, batch, [PositionShift(1000), Pine()]),
                               _suffix_logits(tiny_llama, batch), rtol=0, atol=1e-5)
    one = tiny_llama.segment_batch([SegmentedPrompt("One:", (" single segment",), "?")])
    interpolated = _hidden(tiny_llama, one, [PositionInterpolation(3.0)])[0]
    torch.testing.assert_close(_hidden(tiny_llama, one, [PositionInterpolation(3.0), Pine()])[0], interpolated,
                               rtol=0, atol=1e-5)
    assert (interpolated - _hidden(tiny_llama, one, [])[0]).abs().max() > 1e-4
    orders = ([0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0])
    permuted = tiny_llama.segment_batch([PROMPT.permuted(o) for o in orders])
    logits = torch.stack(_suffix_logits(tiny_llama, permuted, [PositionInterpolation(3.0), Pine()]))
    torch.testing.assert_close(logits, logits[:1].expand_as(logits), rtol=0, atol=1e-5)
    with pytest.raises(PosbenchError, match="pine assigns positions itself"):
        _hidden(tiny_llama, batch, [SharedPositions(), Pine()])


def test_greedy_generation_under_pine_ignores_segment_order(tiny_llama):
    prompts = [tiny_llama.tokenize_segments(PROMPT.permuted(o)) for o in ([0, 1, 2, 3], [3, 0, 2, 1])]
    with tiny_llama.intervene(Pine()):
        tokens = tiny_llama.generate([ids for ids, _ in prompts], max_new_tokens=4, stop_ids=[],
                                     segments=[span for _, span in prompts])
    assert tokens[0] == tokens[1] and len(tokens[0]) == 4
    batch = tiny_llama.segment_batch([PROMPT], continuations=[tokens[0][:-1]])  # the same steps, scored at once
    assert _suffix_logits(tiny_llama, batch)[0][-4:].argmax(-1).tolist() == tokens[0]


# ----------------------------------------------------------------------------- errors and specs
def test_pine_errors_and_spec(tiny_llama, tiny_gpt2):
    assert isinstance(parse_intervention("pine"), Pine)
    with pytest.raises(BadOptionError, match="pine takes no arguments"):
        parse_intervention("pine:3")
    with pytest.raises(PosbenchError, match="pine needs a RoPE model; tiny-gpt2 uses learned_absolute"):
        with tiny_gpt2.intervene(Pine()):
            pass
    with pytest.raises(PineNeedsSegmentsError, match="pine needs segmented prompts"):
        with tiny_llama.intervene(Pine()):
            tiny_llama.forward(tiny_llama.batch(tiny_llama.tokenize(["no segments here"])))
