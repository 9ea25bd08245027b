"""Activation and attention patching against TransformerLens's own patching helpers (run on the
same bridge), hand computations and the normalisation's fixed points."""

import json

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

from posbench.data.patch_pairs import PatchPairsDataset
from posbench.errors import BadOptionError, EmptyDataError, HeadIndexError, MalformedDataError, PosbenchError
from posbench.experiments import Patch, patch_sweep, prepare_pairs, run_patches
from posbench.interventions.head_ablation import HeadAblation
from posbench.probes.patching import PatchingProbe
from posbench.protocols import ActivationEdit
from posbench.sites import Capture, Edit

# IOI-style pairs: the corrupted prompt repeats the other name; names of equal length and token count
CLEAN = ["Mary and John: John to", "Kate and Paul: Paul to"]  # short: tiny models read bytes
CORRUPTED = ["Mary and John: Mary to", "Kate and Paul: Kate to"]
ANSWER, WRONG = [" Mary", " Kate"], [" John", " Paul"]


def _tl_inputs(model, clean=CLEAN, corrupted=CORRUPTED, answer=ANSWER, wrong=WRONG):
    """Token tensors, TransformerLens's clean cache and a scalar logit-difference metric."""
    pairs = prepare_pairs(model, clean, corrupted, answer, wrong)
    a = torch.tensor([m["answer"] for m in pairs.row_meta])
    w = torch.tensor([m["wrong"] for m in pairs.row_meta])
    rows = torch.arange(len(a))

    def metric(logits):
        return (logits[rows, -1, a] - logits[rows, -1, w]).mean()

    bridge = model.backend.bridge  # TransformerLens itself: allowed in tests only
    _, cache = bridge.run_with_cache(torch.tensor(pairs.clean))
    return bridge, torch.tensor(pairs.corrupted), cache, metric


TL_CASES = [  # (our site, sweep arguments, TL helper, TL axes in our (layer, head, position) order)
    ("z", {}, tl_patching.get_act_patch_attn_head_out_all_pos, None),
    ("z", {"positions": "each"}, tl_patching.get_act_patch_attn_head_out_by_pos, (0, 2, 1)),  # TL: layer, pos, head
    ("resid_pre", {}, tl_patching.get_act_patch_resid_pre, None),
    ("resid_post", {"positions": [-1, 3]}, None, None),  # no TL helper for a position subset: below
    ("mlp_out", {}, tl_patching.get_act_patch_mlp_out, None),
    ("attn_out", {}, tl_patching.get_act_patch_attn_out, None),
    ("pattern", {}, tl_patching.get_act_patch_attn_head_pattern_all_pos, None),
    ("pattern", {"positions": "each"}, tl_patching.get_act_patch_attn_head_pattern_by_pos, None),
    ("q", {}, tl_patching.get_act_patch_attn_head_q_all_pos, None),
    ("k", {}, tl_patching.get_act_patch_attn_head_k_all_pos, None),  # GQA: 2 key/value heads
    ("v", {"positions": "each"}, tl_patching.get_act_patch_attn_head_v_by_pos, (0, 2, 1)),
]


@pytest.mark.parametrize("site,sweep,helper,axes", TL_CASES, ids=[f"{c[0]}-{c[1].get('positions', 'default')}" for c in TL_CASES])
def test_sweeps_match_transformer_lens_on_tiny_llama(tiny_llama, site, sweep, helper, axes):
    bridge, corrupted, cache, metric = _tl_inputs(tiny_llama)
    ours = patch_sweep(tiny_llama, CLEAN, CORRUPTED, site, answer=ANSWER, wrong=WRONG, batch_size=24, **sweep)
    if helper is None:  # TL's generic loop over an explicit index table
        index = pd.DataFrame({"layer": ours.table.layer, "pos": ours.table.position.astype(int)})
        expected = tl_patching.generic_activation_patch(
            bridge, corrupted, cache, metric, tl_patching.layer_pos_patch_setter, site, index_df=index)
    else:
        expected = helper(bridge, corrupted, cache, metric)
        if axes is not None:
            expected = expected.permute(*axes)
    n_heads = tiny_llama.n_kv_heads if site in ("k", "v") else tiny_llama.n_heads
    if site in ("k", "v", "q", "z", "pattern"):
        assert ours.table["head"].max() == n_heads - 1
    torch.testing.assert_close(torch.tensor(ours.table.metric.values), expected.flatten().double(), rtol=0, atol=1e-5)


@pytest.mark.embedded
def test_sweeps_match_transformer_lens_on_smollm2(smollm2):
    clean, corrupted = ["When Mary and John went to the store, John gave a drink to"], ["When Mary and John went to the store, Mary gave a drink to"]
    bridge, tokens, cache, metric = _tl_inputs(smollm2, clean, corrupted, [" Mary"], [" John"])
    layers = [2, 27]
    for site, setter, n in (("z", tl_patching.layer_head_vector_patch_setter, smollm2.n_heads),
                            ("v", tl_patching.layer_head_vector_patch_setter, smollm2.n_kv_heads)):  # GQA 9/3
        ours = patch_sweep(smollm2, clean, corrupted, site, answer=" Mary", wrong=" John", layers=layers)
        index = pd.DataFrame([(layer, h) for layer in layers for h in range(n)], columns=["layer", "head"])
        expected = tl_patching.generic_activation_patch(bridge, tokens, cache, metric, setter, site, index_df=index)
        torch.testing.assert_close(torch.tensor(ours.table.metric.values), expected.double(), rtol=0, atol=1e-4)


@pytest.mark.embedded
def test_ioi_information_moves_from_the_subject_to_the_last_position_on_smollm2(smollm2):
    """The published picture of residual-stream patching on IOI (Wang et al. 2022; the
    TransformerLens patching demo): early, only the repeated subject's position restores the
    answer; late, only the last position does. On SmolLM2 the move happens at layers 20-24."""
    rows = [r for r in PatchPairsDataset.generate(0).rows if r["task"] == "ioi"]
    args = [[r[k] for r in rows] for k in ("clean", "corrupted", "answer", "wrong")]
    pairs = prepare_pairs(smollm2, *args)
    s2 = next(t for t in range(pairs.length) if pairs.clean[0][t] != pairs.corrupted[0][t])
    last = pairs.length - 1
    result = run_patches(smollm2, pairs, "resid_pre", [Patch(5, None, s2), Patch(5, None, last),
                                                       Patch(28, None, s2), Patch(28, None, last)])
    assert result.clean_value > 2 and result.corrupted_value < -2  # the model does IOI, and the corruption flips it
    early_s2, early_last, late_s2, late_last = result.table.normalised
    assert early_s2 > 0.9 and abs(early_last) < 0.1
    assert abs(late_s2) < 0.1 and late_last > 0.8


def test_normalisation_fixed_points(tiny_llama):
    """1 = clean and 0 = corrupted exactly where the patched run *is* the clean or corrupted run."""
    pairs = prepare_pairs(tiny_llama, CLEAN, CORRUPTED, ANSWER, WRONG)
    last = tiny_llama.n_layers - 1
    denoise = run_patches(tiny_llama, pairs, "resid_post", [Patch(last)])  # the clean final residual
    noise = run_patches(tiny_llama, pairs, "resid_post", [Patch(last)], mode="noise")
    assert denoise.table.metric[0] == pytest.approx(denoise.clean_value, abs=1e-6)
    assert noise.table.metric[0] == pytest.approx(noise.corrupted_value, abs=1e-6)
    assert denoise.table.normalised[0] == pytest.approx(1.0, abs=1e-3)  # the gap is ~0.01 on a random model
    assert noise.table.normalised[0] == pytest.approx(0.0, abs=1e-3)
    # layer 0's resid_pre is the token embedding: at every position the patch is the clean input
    # (1); where the two prompts hold the same token it changes nothing (0)
    same = [t for t in range(pairs.length) if all(c[t] == k[t] for c, k in zip(pairs.clean, pairs.corrupted))]
    assert 0 < len(same) < pairs.length
    result = run_patches(tiny_llama, pairs, "resid_pre", [Patch(0)] + [Patch(0, None, t) for t in same])
    assert result.table.metric[0] == pytest.approx(result.clean_value, abs=1e-6)
    assert (result.table.metric[1:] - result.corrupted_value).abs().max() < 1e-6


def test_pattern_patch_changes_the_output_as_a_hand_computation(tiny_llama):
    """A patched attention pattern must reach the output (causalab #53): z_h = A_clean[h] @ v_kv(h)."""
    layer, head = 1, 3
    pairs = prepare_pairs(tiny_llama, CLEAN, CORRUPTED, ANSWER, WRONG)
    ours = run_patches(tiny_llama, pairs, "pattern", [Patch(layer, head)])
    clean, corrupted = tiny_llama.batch(pairs.clean), tiny_llama.batch(pairs.corrupted, row_meta=pairs.row_meta)
    keep = lambda x, ctx: x.clone()  # noqa: E731
    pattern = tiny_llama.run(clean, [Capture("p", "pattern", keep, (layer,))]).captured["p"][layer]
    v = tiny_llama.run(corrupted, [Capture("v", "v", keep, (layer,))]).captured["v"][layer]
    kv = tiny_llama.card.kv_head_of(head)
    z_head = torch.einsum("bts,bsd->btd", pattern[:, head], v[:, :, kv])

    class HandZ(ActivationEdit):
        name = "hand-z"

        def params(self):
            return {}

        def edits(self, model):
            def set_head(z, ctx):
                out = z.clone()
                out[:, :, head] = z_head
                return out

            return [Edit("z", set_head, (layer,))]

    with tiny_llama.intervene(HandZ()):
        logits = tiny_llama.forward(corrupted)[:, -1]
    rows = torch.arange(pairs.n_pairs)
    a = torch.tensor([m["answer"] for m in pairs.row_meta])
    w = torch.tensor([m["wrong"] for m in pairs.row_meta])
    by_hand = float((logits[rows, a] - logits[rows, w]).mean())
    assert abs(ours.table.metric[0] - ours.corrupted_value) > 1e-4  # the edit reached the output
    assert ours.table.metric[0] == pytest.approx(by_hand, abs=1e-5)


def test_batching_and_metric_paths_agree(tiny_llama):
    sweep = dict(answer=ANSWER, wrong=WRONG, positions=[-1, -2, -3])
    one = patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", batch_size=1, **sweep)
    many = patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", batch_size=64, **sweep)
    torch.testing.assert_close(torch.tensor(one.table.metric.values), torch.tensor(many.table.metric.values), rtol=0, atol=1e-5)

    def full_logit_diff(logits, batch):  # any metric(logits, batch) -> [batch]; gets every position
        assert logits.shape[1] == batch.width
        a = torch.tensor([m["answer"] for m in batch.row_meta])
        w = torch.tensor([m["wrong"] for m in batch.row_meta])
        rows = torch.arange(batch.size)
        return logits[rows, -1, a] - logits[rows, -1, w]

    full = patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", metric=full_logit_diff, **sweep)
    torch.testing.assert_close(torch.tensor(full.table.metric.values), torch.tensor(many.table.metric.values), rtol=0, atol=1e-5)
    assert full.metric_name == "full_logit_diff"


def test_patches_compose_with_active_interventions(tiny_llama):
    """Under an ablation of head (1, 2), its patch writes the clean z = 0 over z = 0: no effect."""
    plain = patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", answer=ANSWER, wrong=WRONG, layers=[1], heads=[2])
    with tiny_llama.intervene(HeadAblation([(1, 2)])):
        ablated = patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", answer=ANSWER, wrong=WRONG, layers=[1], heads=[2])
    assert abs(plain.table.normalised[0]) > 1e-3
    assert ablated.table.normalised[0] == pytest.approx(0.0, abs=1e-6)
    assert tiny_llama.active_interventions == []


def test_result_table_and_figures(tiny_llama):
    result = patch_sweep(tiny_llama, CLEAN, CORRUPTED, "pattern", answer=ANSWER, wrong=WRONG, positions=[-1, -2])
    t = result.table
    assert list(t.columns) == ["site", "layer", "head", "position", "metric", "normalised"]
    assert len(t) == tiny_llama.n_layers * tiny_llama.n_heads * 2
    assert set(t.position) == {len(result.tokens) - 1, len(result.tokens) - 2}
    fig = result.figure()
    assert fig.layout.yaxis.title.text == "layer.head" and len(fig.data[0].y) == tiny_llama.n_layers * tiny_llama.n_heads
    heads = patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", answer=ANSWER, wrong=WRONG)
    assert heads.figure().data[0].z.shape == (tiny_llama.n_layers, tiny_llama.n_heads)
    assert heads.top(3).shape[0] == 3


def test_clear_errors(tiny_llama):
    with pytest.raises(BadOptionError, match="pair 0: the clean prompt has .* tokens and the corrupted one"):
        prepare_pairs(tiny_llama, ["Mary met John"], ["Mary met Jo"], " a", " b")
    with pytest.raises(BadOptionError, match="different lengths"):
        prepare_pairs(tiny_llama, ["ab", "abc"], ["ac", "acc"], [" a", " a"], [" b", " b"])
    with pytest.raises(BadOptionError, match="one is a prefix of the other"):
        prepare_pairs(tiny_llama, "ab", "ac", " Ma", " Mary")
    with pytest.raises(BadOptionError, match="no heads"):
        patch_sweep(tiny_llama, CLEAN, CORRUPTED, "resid_pre", answer=ANSWER, wrong=WRONG, heads=[0])
    with pytest.raises(HeadIndexError, match="2 key/value heads"):
        patch_sweep(tiny_llama, CLEAN, CORRUPTED, "k", answer=ANSWER, wrong=WRONG, heads=[2])
    with pytest.raises(BadOptionError, match="cannot patch site 'scores'"):
        patch_sweep(tiny_llama, CLEAN, CORRUPTED, "scores", answer=ANSWER, wrong=WRONG)
    with pytest.raises(BadOptionError, match="one value per row"):
        patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", metric=lambda logits, batch: logits.sum())
    with pytest.raises(PosbenchError, match="on both the clean and the corrupted prompts"):
        patch_sweep(tiny_llama, CLEAN, CLEAN, "z", answer=ANSWER, wrong=WRONG)
    with pytest.raises(BadOptionError, match="mode must be"):
        patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", answer=ANSWER, wrong=WRONG, mode="both")


def test_probe_on_user_pairs_and_builtin_pairs(tiny_llama, tmp_path):
    rows = [{"clean": c, "corrupted": k, "answer": a, "wrong": w} for c, k, a, w in zip(CLEAN, CORRUPTED, ANSWER, WRONG)]
    rows.append({"clean": "Mary met John", "corrupted": "Mary met Jo", "answer": " a", "wrong": " b", "id": "short"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data, overrides = PatchingProbe.load_data(str(path))
    result = PatchingProbe(sites=("z",), **overrides).run(tiny_llama, data=data)
    assert result.summary["pairs"] == 2 and result.summary["pairs_dropped"] == 1
    assert result.metadata["data"]["dropped"][0][0] == "short"
    direct = patch_sweep(tiny_llama, CLEAN, CORRUPTED, "z", answer=ANSWER, wrong=WRONG)
    torch.testing.assert_close(torch.tensor(result.tables["patching"].metric.values), torch.tensor(direct.table.metric.values))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clean": "a", "corrupted": "a", "answer": " x", "wrong": " y"}) + "\n")
    with pytest.raises(MalformedDataError, match="bad.jsonl:1: \"corrupted\" equals \"clean\""):
        PatchingProbe.load_data(str(bad))
    with pytest.raises(EmptyDataError, match="no pair can be patched"):
        PatchingProbe(sites=("z",)).run(tiny_llama, data=rows[-1:])
    kv = PatchingProbe(task="kv", n_pairs=3, sites=("resid_pre",), positions="all").run(tiny_llama)
    assert kv.summary["pairs"] == 3 and kv.summary["pairs_dropped"] == 0
    assert set(kv.figures) == {"patch_resid_pre"}


def test_builtin_pairs_have_one_length_per_task(tiny_llama):
    rows = PatchPairsDataset.generate(0).rows
    assert rows == PatchPairsDataset.generate(0).rows and rows != PatchPairsDataset.generate(1).rows
    for task in ("ioi", "kv"):
        mine = [r for r in rows if r["task"] == task]
        pairs = prepare_pairs(tiny_llama, *([r[k] for r in mine] for k in ("clean", "corrupted", "answer", "wrong")))
        assert pairs.n_pairs == 8  # every pair of a task patches together (equal token lengths)
