"""The fast attention path (issue 13) against the eager reference, at three levels.

1. Rows, same q/k: ``pattern_rows`` on the q/k an eager forward produced equals that forward's
   own pattern (atol 1e-6: identical inputs, float32 softmax on both sides).
2. Statistics inside a fast forward: a statistic that asks for the post-RoPE q/k recomputes the
   full rows from them with a mask built independently from the batch and the model card
   (causal, padding, sliding window) and compares with the rows the fast path hands it (1e-6).
   This runs through the real fast path: transformers' mask, the HF module's RoPE, GQA/MQA.
3. End to end: every probe's tables on the fast and the eager path. The two forwards differ by
   SDPA vs eager rounding (~1e-7 relative per layer in float32), so later layers' q/k differ a
   little: attention statistics within 1e-5 on the tiny models and 5e-5 on the 18/30-layer
   embedded ones (measured: up to 1.1e-5), residual magnitudes within 1e-5 relative.

Plus the fallback rule, edits and key masks on fast layers, and a memory bound that a [T, T]
matrix per layer would break. Timings are not tested (benchmarks/ measures them).
"""

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

import posbench
from posbench.backends.attention_rows import pattern_rows
from posbench.errors import PosbenchError
from posbench.interventions.head_ablation import HeadAblation
from posbench.interventions.rope_bands import RopeBandZero, RopePositionFree
from posbench.probes.positional_heads import PositionalHeadsProbe
from posbench.probes.rope_usage import RopeUsageProbe
from posbench.probes.sinks import SinkProbe
from posbench.sites import AttentionCapture, AttentionOverride, AttentionStatistic, Capture, Edit, HeadPattern

TEXTS = ["The cat sat on the mat and looked out of the window at the rain.", "Hi", "Position matters a great deal."]


def _keep(x, ctx):
    return x.detach().clone()


def reference_mask(batch, card, layer: int) -> torch.Tensor:
    """bool [B, 1, T, T], built from the batch and the card alone: causal, real keys only, and
    HF's sliding window (key j visible from query i iff i - j < window)."""
    width = batch.width
    i, j = torch.arange(width)[:, None], torch.arange(width)[None, :]
    allowed = j <= i
    window = card.sliding_windows[layer]
    if window:
        allowed = allowed & (i - j < window)
    return allowed[None, None] & batch.attention_mask.bool().cpu()[:, None, None, :]


def reference_rows(q, k, mask, scaling, kv_of) -> torch.Tensor:
    """Naive softmax attention: q [B, n, H, d] (a chunk of queries), k [B, T, Hkv, d], mask [B, 1, n, T]."""
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k[:, :, kv_of].double()) * scaling
    return scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)


# ---------------------------------------------------------------------------- 1. rows, same q/k
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_neox", "tiny_gpt2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_rows_from_qk_equal_the_eager_pattern(request, fixture, padding_side):
    model = request.getfixturevalue(fixture)
    rope = model.card.position_encoding == "rope"
    qs, ks = ("rot_q", "rot_k") if rope else ("q", "k")
    batch = model.batch(model.tokenize(TEXTS), padding_side)
    with model.using_attention("eager"):
        out = model.run(batch, [Capture(s, s, _keep) for s in (qs, ks, "pattern")])
    for layer in range(model.n_layers):
        q, k = out[qs][layer].transpose(1, 2), out[ks][layer].transpose(1, 2)  # [B, H, T, d]
        mask = reference_mask(batch, model.card, layer)
        rows = torch.cat([r.clone() for _, r in pattern_rows(q, k, mask, model.attention_scaling(layer), chunk=16)], dim=2)
        for b in range(batch.size):
            cols = batch.real_columns(b)
            torch.testing.assert_close(rows[b, :, cols], out["pattern"][layer][b, :, cols].float(), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- 2. inside a fast forward
class RowsAgainstReference(AttentionStatistic):
    """Compares the rows it is handed with rows recomputed from rot_q/rot_k and a mask built from
    the batch and card alone; returns the largest difference on real query rows and the number
    of rows checked."""

    needs = ("rot_q", "rot_k")

    def __init__(self, card):
        self.card = card

    def start(self, ctx):
        return {"diff": 0.0, "rows": 0, "mask": reference_mask(ctx.batch, self.card, ctx.layer)}

    def update(self, state, rows, start, ctx):
        n = rows.shape[2]
        q = ctx.tensors["rot_q"][:, start : start + n].cpu()
        mask = state["mask"][:, :, start : start + n]
        expected = reference_rows(q, ctx.tensors["rot_k"].cpu(), mask, ctx.facts.scaling[ctx.layer], ctx.facts.kv_of)
        real = ctx.batch.attention_mask.bool().cpu()[:, start : start + n]  # [B, n]
        diff = (rows.cpu().double() - expected).abs().amax(dim=(1, 3))  # [B, n]
        state["diff"] = max(state["diff"], float(diff[real].max()) if real.any() else 0.0)
        state["rows"] += int(real.sum())
        return state

    def finish(self, state, ctx):
        return state["diff"], state["rows"]


class SpanSums(AttentionStatistic):
    """Per query, the attention on keys 0, 1..3 and 4.. of the padded batch: [B, H, T, 3]. With
    ``declared``, through key weights (the fast path's extra value channels), else from rows."""

    def __init__(self, declared: bool):
        self.declared = declared

    def _weights(self, batch):
        weights = torch.zeros(batch.size, batch.width, 3)
        weights[:, 0, 0], weights[:, 1:4, 1], weights[:, 4:, 2] = 1.0, 1.0, 1.0
        return weights

    def key_weights(self, ctx):
        return self._weights(ctx.batch) if self.declared else None

    def start(self, ctx):
        return []

    def update(self, state, rows, start, ctx):
        state.append(rows.cpu().clone() if self.declared else rows.cpu() @ self._weights(ctx.batch)[:, None])
        return state

    def finish(self, state, ctx):
        return torch.cat(state, dim=2)


def _check_fast_rows(model, batch, atol):
    stat = AttentionCapture("check", RowsAgainstReference(model.card))
    sums = [AttentionCapture("declared", SpanSums(True)), AttentionCapture("from_rows", SpanSums(False))]
    assert model.backend._fast_layers([stat], [], []) == frozenset(range(model.n_layers))
    out = model.run(batch, [stat, *sums])
    real = batch.attention_mask.bool()
    for layer in range(model.n_layers):
        diff, rows = out["check"][layer]
        assert rows == int(real.sum()) and diff < atol, (layer, diff)
        # rows @ W from the attention kernel itself equals the same sums of the checked rows
        declared, from_rows = out["declared"][layer], out["from_rows"][layer]
        torch.testing.assert_close(declared.transpose(1, 2)[real], from_rows.transpose(1, 2)[real], rtol=0, atol=atol)
    return out


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_neox"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_fast_rows_equal_rows_recomputed_from_the_same_qk(request, fixture, padding_side):
    model = request.getfixturevalue(fixture)
    _check_fast_rows(model, model.batch(model.tokenize(TEXTS), padding_side), atol=1e-6)


@pytest.mark.embedded
def test_fast_rows_on_embedded_models_gqa_sliding_windows_two_bases(embedded):
    """SmolLM2: GQA 9/3. Gemma 3: MQA 4/1, q/k-norm, two RoPE bases, sliding window 512 on five
    of six layers: 700 tokens (and 560, left-padded) cross the window, so the sliding layers'
    rows start after key 0 while the global layers' do not. atol 1e-5: float32 scores of these
    models reach tens, so the float32 rows and the float64 reference differ by up to ~4e-6."""
    first, second = embedded.random_tokens(2, 700, torch.Generator().manual_seed(0)).tolist()
    batch = embedded.batch([first, second[:560]], "left")
    _check_fast_rows(embedded, batch, atol=1e-5)
    windows = embedded.card.sliding_windows
    if any(windows):  # negative control: a reference that ignores the window is far off on sliding layers
        blind = AttentionCapture("blind", RowsAgainstReference(dataclasses.replace(embedded.card, sliding_windows=[None] * len(windows))))
        out = embedded.run(batch, [blind])
        assert all(out["blind"][layer][0] > 1e-3 for layer, w in enumerate(windows) if w)



def _row_path_logits_equal_sdpa(model, batch, atol, rtol=0.0):
    """A statistic that needs every head's rows makes the layer compute its output from those rows
    (``attention_from_rows``, no SDPA call): logits equal a plain SDPA pass's on the real tokens."""
    stat = AttentionCapture("check", RowsAgainstReference(model.card))
    with_rows = model.run(batch, [stat], logits=True)
    plain = model.run(batch, [], logits=True)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(with_rows.logits[real], plain.logits[real], rtol=rtol, atol=atol)
    assert all(with_rows["check"][layer][0] < 1e-5 for layer in range(model.n_layers))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_output_from_rows_equals_sdpa_tiny(tiny_llama, padding_side):
    _row_path_logits_equal_sdpa(tiny_llama, tiny_llama.batch(tiny_llama.tokenize(TEXTS), padding_side), atol=1e-5)


@pytest.mark.embedded
def test_output_from_rows_equals_sdpa_embedded(embedded):
    """GQA (SmolLM2) and Gemma-3's sliding layers at 700 tokens, left-padded (the window's band).
    Summation order alone moves float32 logits of ~50 by up to ~1e-5 relative over the layers."""
    first, second = embedded.random_tokens(2, 700, torch.Generator().manual_seed(1)).tolist()
    _row_path_logits_equal_sdpa(embedded, embedded.batch([first, second[:560]], "left"), atol=1e-4, rtol=3e-5)


# ---------------------------------------------------------------------------- 3. probes end to end
# Which of several near-equal residual entries ranks first is a coin toss at 1e-7 (a repeated
# token gives dozens of equal norms): the sinks probe's top-activation positions and dims are not
# compared, their values are.
TIE_BROKEN = {"massive_top": ("position", "dim")}


def _compare_tables(fast, eager, atol):
    """Float columns within ``atol`` (plus 1e-5 relative for residual-stream magnitudes in the
    thousands), every other column equal."""
    assert set(fast) == set(eager)
    for name in fast:
        a, b = fast[name], eager[name]
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        for col in a.columns:
            if col in TIE_BROKEN.get(name, ()):
                continue
            if pd.api.types.is_float_dtype(a[col]):
                np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, atol=atol, err_msg=f"{name}.{col}")
            else:
                assert (a[col].to_numpy() == b[col].to_numpy()).all(), f"{name}.{col}"


def _probes(model, padding_side, small: bool):
    n = 16 if small else 24
    probes = [
        SinkProbe(seq_len=n, n_sequences=3, padding_side=padding_side),
        PositionalHeadsProbe(seq_len=n, n_random=2, n_natural=3, n_repeated=2, repeat_len=6, padding_side=padding_side),
    ]
    if model.card.position_encoding == "rope":
        probes.append(RopeUsageProbe(seq_len=n, n_sequences=3, padding_side=padding_side))
    return probes


def _fast_and_eager(model, probe):
    fast = probe.run(model)
    with model.using_attention("eager"):
        eager = probe.run(model)
    assert fast.metadata["attn_implementation"] == "sdpa" and eager.metadata["attn_implementation"] == "eager"
    return fast.tables, eager.tables


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_neox", "tiny_gpt2"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_probe_tables_fast_equal_eager_tiny(request, fixture, padding_side):
    model = request.getfixturevalue(fixture)
    for probe in _probes(model, padding_side, small=True):
        _compare_tables(*_fast_and_eager(model, probe), atol=1e-5)


@pytest.mark.embedded
def test_probe_tables_fast_equal_eager_embedded(embedded):
    """Left padding only (it shifts every position; right padding is covered on the tiny models)."""
    for probe in _probes(embedded, "left", small=False):
        _compare_tables(*_fast_and_eager(embedded, probe), atol=5e-5)


@pytest.mark.parametrize("head", [0, 3])
def test_one_head_pattern_is_computed_alone(tiny_llama, head):
    """HeadPattern asks for one query head (GQA: head 3 reads key head 1): the fast path builds
    its [B, T, T] from that head's q and its key head only, equal to the eager pattern's slice."""
    batch = tiny_llama.batch(tiny_llama.tokenize(TEXTS), "left")
    fast = tiny_llama.run(batch, [AttentionCapture("one", HeadPattern(head))])["one"]
    with tiny_llama.using_attention("eager"):
        eager = tiny_llama.run(batch, [Capture("p", "pattern", _keep)])["p"]
    for layer in range(tiny_llama.n_layers):
        assert fast[layer].shape == (batch.size, batch.width, batch.width)
        for b in range(batch.size):
            cols = batch.real_columns(b)
            torch.testing.assert_close(fast[layer][b, cols], eager[layer][b, head, cols], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- the fallback rule
class _Nothing(AttentionOverride):
    def scores(self, q, k, ctx):
        return ctx.tensors["scores"]


def test_which_layers_run_fast(tiny_llama, tiny_neox, tiny_gpt2):
    every = frozenset({0, 1})
    fast = tiny_llama.backend._fast_layers
    assert fast([AttentionCapture("s", RowsAgainstReference(tiny_llama.card))], [], []) == every
    assert fast([Capture("p", "pattern", _keep, layers=(1,))], [], []) == {0}
    assert fast([], [Edit("scores", lambda x, c: x, layers=(0,))], []) == {1}
    override = _Nothing()
    override.layers = (1,)
    assert fast([], [], [override]) == {0}
    assert fast([Capture(s, s, _keep) for s in ("q", "k", "v", "rot_q", "z", "attn_out", "rope_cos")], [], []) == every
    # GPT-NeoX: the HF module splits its fused q/k/v itself (no q/k/v hooks), RoPE'd q/k are fired by the fast path
    assert tiny_neox.backend._fast_layers([Capture("q", "q", _keep, layers=(0,))], [], []) == {1}
    assert tiny_neox.backend._fast_layers([Capture("rot_k", "rot_k", _keep)], [], []) == every
    # GPT-2: z is fired on the attention output (its HF module projects with its own Conv1D)
    assert tiny_gpt2.backend._fast_layers([], [Edit("z", lambda x, c: x)], []) == every
    with tiny_llama.using_attention("eager"):
        assert fast([], [], []) == frozenset()


def test_mixed_pass_eager_layer_sees_the_same_pattern(tiny_llama):
    """A pattern capture makes its layer eager inside an otherwise fast pass: with the SDPA-style
    masks (None / boolean) the bridge gets there, its pattern is the eager pass's pattern."""
    batch = tiny_llama.batch(tiny_llama.tokenize(TEXTS), "left")
    capture = [Capture("p", "pattern", _keep, layers=(1,))]
    mixed = tiny_llama.run(batch, capture)["p"][1]
    with tiny_llama.using_attention("eager"):
        eager = tiny_llama.run(batch, capture)["p"][1]
    for b in range(batch.size):
        cols = batch.real_columns(b)
        torch.testing.assert_close(mixed[b, :, cols], eager[b, :, cols], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fixture,iv", [
    ("tiny_llama", HeadAblation([(0, 1), (1, 2)])),
    ("tiny_gpt2", HeadAblation([(0, 1), (1, 3)])),
    ("tiny_llama", RopePositionFree(fraction=0.5)),
    ("tiny_neox", RopePositionFree(fraction=0.5)),
    ("tiny_llama", RopeBandZero(pairs=[0, 1], target="k")),
])
def test_edits_on_fast_layers_act_as_on_eager_layers(request, fixture, iv):
    model = request.getfixturevalue(fixture)
    batch = model.batch(model.tokenize(TEXTS), "left")
    real = batch.attention_mask.bool()
    baseline = model.forward(batch)
    with model.intervene(iv):
        fast = model.forward(batch)
        with model.using_attention("eager"):
            eager = model.forward(batch)
    assert (fast - baseline)[real].abs().max() > 1e-4  # the edit does something (50x the tolerance below)
    torch.testing.assert_close(fast[real], eager[real], rtol=0, atol=2e-6)


def test_key_mask_on_fast_layers(tiny_llama):
    """An explicit key mask goes into the fast path's SDPA mask and into the rows it rebuilds."""
    batch = tiny_llama.batch(tiny_llama.tokenize(TEXTS), "right")
    width = batch.width
    key_mask = torch.ones(batch.size, width, width, dtype=torch.bool)
    key_mask[:, :, 1:4] = False  # nobody may look at keys 1..3 ...
    key_mask[:, torch.arange(width), torch.arange(width)] = True  # ... except themselves
    batch.key_mask = key_mask
    captures = [AttentionCapture("mass", _ColumnMass()), Capture("resid", "resid_post", _keep, layers=(1,))]
    fast = tiny_llama.run(batch, captures, logits=True)
    with tiny_llama.using_attention("eager"):
        eager = tiny_llama.run(batch, captures, logits=True)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(fast.logits[real], eager.logits[real], rtol=0, atol=1e-5)
    for layer in range(2):
        torch.testing.assert_close(fast["mass"][layer], eager["mass"][layer], rtol=0, atol=1e-6)
        # keys 1..3 receive attention only from themselves
        assert fast["mass"][layer][:, :, 1:4].max() <= 1.0 + 1e-6


class _ColumnMass(AttentionStatistic):
    """Total attention each key column receives from real queries: [B, H, T]."""

    def start(self, ctx):
        return 0.0

    def update(self, state, rows, start, ctx):
        real = ctx.batch.attention_mask[:, start : start + rows.shape[2]].to(rows.dtype)
        return state + (rows * real[:, None, :, None]).sum(2)

    def finish(self, state, ctx):
        return state.cpu()


def test_choice_is_explicit_and_recorded(tiny_llama):
    assert tiny_llama.card.attn_implementation == "sdpa" == tiny_llama.backend.describe()["attn_implementation"]
    with tiny_llama.using_attention("eager"):
        assert tiny_llama.backend.describe()["attn_implementation"] == "eager"
    assert tiny_llama.card.attn_implementation == "sdpa"
    with pytest.raises(PosbenchError, match="unknown attn_implementation 'flash'"):
        posbench.load_model("tiny-llama", attn_implementation="flash")
    with pytest.raises(PosbenchError, match="unknown attn_implementation"):
        with tiny_llama.using_attention("flash"):
            pass


# ---------------------------------------------------------------------------- memory
def test_memory_estimate_counts_one_chunk_of_rows_on_the_fast_path(tiny_llama, monkeypatch):
    """posbench.limits plans one layer's attention as T rows on the eager path and one chunk of
    rows on the fast path: a limit between the two estimates lets the fast run through and
    refuses the eager one."""
    from posbench.errors import ResourceLimitError
    from posbench.limits import Workload

    card, tokens = tiny_llama.card, 512
    assert tiny_llama.attention_rows_held(tokens) == 256 and tiny_llama.attention_rows_held(100) == 100
    with tiny_llama.using_attention("eager"):
        assert tiny_llama.attention_rows_held(tokens) == tokens
    work = Workload(sequences=1, tokens=tokens, batch=1)
    fast, eager = (work.peak_bytes(card.n_heads, card.d_model, card.n_layers, query_rows=r) for r in (256, tokens))
    assert eager - fast == card.n_heads * 256 * tokens * 4 * 3  # the rows the fast path never holds
    monkeypatch.setenv("POSBENCH_MEMORY_LIMIT", str((fast + eager) // 2))
    probe = SinkProbe(seq_len=tokens, n_sequences=1, inputs=("random",), first_token_test=False, batch_size=1)
    assert probe.run(tiny_llama).metadata["attn_implementation"] == "sdpa"
    with tiny_llama.using_attention("eager"), pytest.raises(ResourceLimitError, match="x 512 x 512 attention"):
        probe.run(tiny_llama)


def test_memory_plan_counts_the_interventions_a_probe_runs_under(tiny_llama, monkeypatch):
    """The memory check runs under the interventions handed to ``probe.run``: PINE's scores
    override makes every layer eager (T rows), and its token reordering keeps two more copies of
    a layer's rows. A limit between the plain fast plan and PINE's lets the plain run through and
    refuses PINE before any input is built."""
    from posbench.errors import ResourceLimitError
    from posbench.interventions.pine import Pine
    from posbench.limits import ATTENTION_COPIES, REORDER_COPIES, Workload

    card, tokens = tiny_llama.card, 512
    work = Workload(sequences=1, tokens=tokens, batch=1)
    fast = work.peak_bytes(card.n_heads, card.d_model, card.n_layers, query_rows=256)
    pine = work.peak_bytes(card.n_heads, card.d_model, card.n_layers, query_rows=tokens,
                           copies=ATTENTION_COPIES + REORDER_COPIES)
    monkeypatch.setenv("POSBENCH_MEMORY_LIMIT", str((fast + pine) // 2))
    probe = SinkProbe(seq_len=tokens, n_sequences=1, inputs=("random",), first_token_test=False, batch_size=1)
    probe.run(tiny_llama)
    with pytest.raises(ResourceLimitError, match=f"{ATTENTION_COPIES + REORDER_COPIES} x batch 1 x 4 heads x 512 x 512"):
        probe.run(tiny_llama, interventions=[Pine()])
    assert not tiny_llama.interventions  # nothing left active after the refusal


MEMORY_CHILD = textwrap.dedent("""
    import resource, torch
    import posbench
    from posbench.probes.sinks import SinkProbe
    from posbench.zoo import build_tiny

    torch.set_num_threads(1)
    hf, tok = build_tiny("tiny-llama")
    hf.config.max_position_embeddings = 8192
    model = posbench.load_model(hf, tok, attn_implementation="{mode}")
    run = lambda n: SinkProbe(seq_len=n, n_sequences=1, inputs=("random",), first_token_test=False, batch_size=1).run(model)
    run(256)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run({length})
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def test_memory_grows_linearly_not_with_t_squared():
    """8192 tokens through tiny-llama (4 heads): one [4, T, T] float32 matrix is 1 GiB, so a
    pass that kept a layer's scores or pattern would raise the peak RSS by at least that. The
    fast path holds [4, 256, T] (32 MiB) at a time."""
    code = MEMORY_CHILD.format(mode="sdpa", length=8192)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown_mib = float(done.stdout.strip().splitlines()[-1])
    assert grown_mib < 256, grown_mib


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_tables_do_not_depend_on_the_row_chunk(tiny_llama, monkeypatch, attention):
    """8-row chunks put whole chunks before and after the repeated copy of positional-heads'
    induction input (a chunk with no second-copy query once crashed it past 512 tokens)."""
    probe = PositionalHeadsProbe(seq_len=48, n_random=2, n_natural=2, n_repeated=2, repeat_len=12, padding_side="left")
    with tiny_llama.using_attention(attention):
        whole = probe.run(tiny_llama).tables
        monkeypatch.setattr(tiny_llama.backend, "row_chunk", 8)
        chunked = probe.run(tiny_llama).tables
    _compare_tables(chunked, whole, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-llama", "smollm2"])
def test_repeat_scores_come_from_the_kernel_logsumexp_without_pattern_rows(name, tiny_llama, request, monkeypatch):
    """RepeatScores declares its two diagonals as entries: on a batch without padding the fast
    path reads them off the flash kernel's per-row logsumexp and builds no pattern row; on a
    right-padded batch (a mask: no logsumexp kernel) they are gathered from the rows. Both equal
    the diagonals of the eager pattern (within 1e-6 on tiny-llama, 2e-5 on 30-layer SmolLM2,
    whose later layers see SDPA-vs-eager rounding)."""
    import posbench.backends.transformer_lens as tl_backend
    from posbench.head_statistics import RepeatScores

    model = tiny_llama if name == "tiny-llama" else request.getfixturevalue("smollm2")
    n = 12
    prefix = [model.tokenizer.bos_token_id] if model.card.adds_bos else []
    halves = model.random_tokens(3, n, torch.Generator().manual_seed(5))
    equal = [prefix + h.tolist() + h.tolist() for h in halves[:2]]
    padded = equal + [prefix + halves[2].tolist() * 2 + halves[2].tolist()[:5]]  # longer: the others pad
    capture = [AttentionCapture("repeat", RepeatScores(n, len(prefix)))]
    atol = 1e-6 if name == "tiny-llama" else 2e-5

    def no_rows(*args, **kwargs):
        raise AssertionError("pattern rows built for an entries statistic")

    with monkeypatch.context() as patch:
        patch.setattr(tl_backend, "pattern_rows", no_rows)
        patch.setattr(tl_backend, "attention_from_rows", no_rows)
        fast = model.run(model.batch(equal, "right"), capture)
    gathered = model.run(model.batch(padded, "right"), capture)
    with model.using_attention("eager"):
        eager = model.run(model.batch(padded, "right"),
                          [AttentionCapture(f"head {h}", HeadPattern(h)) for h in range(model.n_heads)])
    second = torch.arange(len(prefix) + n + 1, len(prefix) + 2 * n)
    for layer in range(model.n_layers):
        pattern = torch.stack([eager[f"head {h}"][layer] for h in range(model.n_heads)], dim=1)
        want_dup = pattern[:, :, second, second - n].mean(-1)
        want_ind = pattern[:, :, second, second - n + 1].mean(-1)
        for out, rows in ((fast, 2), (gathered, 3)):
            dups, inds = out["repeat"][layer]
            assert len(dups) == rows
            torch.testing.assert_close(torch.stack(dups), want_dup[:rows], rtol=0, atol=atol)
            torch.testing.assert_close(torch.stack(inds), want_ind[:rows], rtol=0, atol=atol)
