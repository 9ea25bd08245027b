"""Head ablation modes (zero, mean, resample), whole layers and key/value heads, each against an
independent computation: W_O columns zeroed, v zeroed, z replaced by hand from a manual capture."""

import random

import pytest
import torch

from posbench.errors import BadOptionError, HeadIndexError, PosbenchError
from posbench.interventions.head_ablation import HeadAblation
from posbench.protocols import ActivationEdit
from posbench.registry import parse_intervention
from posbench.sites import Capture, Edit

REFERENCE = ["A short text.", "Another reference paragraph, longer than the first one.", "Third: medium length."]
INPUTS = ["Position shapes what a model does, and a longer input runs past every reference text here.", "Short"]


class ByHand(ActivationEdit):
    """Test helper: the tensor at ``site`` in ``layer`` replaced by ``fn(tensor, ctx)``."""

    name = "by-hand"

    def __init__(self, site, layer, fn):
        self.site, self.layer, self.fn = site, layer, fn

    def params(self):
        return {}

    def edits(self, model):
        return [Edit(self.site, self.fn, (self.layer,))]


def set_heads(heads, values):
    """An edit function putting ``values(z, ctx)`` [B, T, len(heads), d] into z's ``heads``."""
    def replace(z, ctx):
        out = z.clone()
        out[:, :, heads] = values(z, ctx)
        return out

    return replace


def _z_by_hand(model, text_ids, layer):
    """z [T, H, d] of one unpadded sequence, read with a plain capture."""
    batch = model.batch([text_ids])
    return model.run(batch, [Capture("z", "z", lambda z, ctx: z.clone(), (layer,))]).captured["z"][layer][0]


def _left_batch(model):
    return model.batch(model.tokenize(INPUTS), "left")


def test_zero_ablation_of_a_layer_and_of_a_kv_head(tiny_llama):
    """``L.*`` = every W_O column of the layer zeroed; ``kv=True`` = the kv head's v zeroed =
    W_O columns of every query head in its group zeroed."""
    model = tiny_llama
    batch = _left_batch(model)
    o = model.hf_model.model.layers[1].self_attn.o_proj.weight
    d = model.d_head
    group = [q for q in range(model.n_heads) if model.card.kv_head_of(q) == 1]
    assert group == [2, 3]  # GQA 4/2
    with model.intervene(HeadAblation([(1, "*")])):
        whole = model.forward(batch)
    with model.intervene(HeadAblation([(1, 1)], kv=True)):
        kv = model.forward(batch)

    def zero_kv_head_1(v, ctx):
        out = v.clone()
        out[:, :, 1] = 0.0
        return out

    with model.intervene(ByHand("v", 1, zero_kv_head_1)):
        v_zeroed = model.forward(batch)
    saved = o.detach().clone()
    with torch.no_grad():
        o[:, [c for h in group for c in range(h * d, (h + 1) * d)]] = 0.0
        group_by_hand = model.forward(batch)
        o.zero_()
        layer_by_hand = model.forward(batch)
        o.copy_(saved)
    torch.testing.assert_close(whole, layer_by_hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(kv, group_by_hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(kv, v_zeroed, rtol=0, atol=1e-5)
    assert (kv - model.forward(batch)).abs().max() > 1e-3


def test_mean_ablation_equals_the_mean_replaced_by_hand(tiny_llama):
    """Position-matched mean over the reference texts; the pooled mean (positions >= 1) past the
    longest one; left padding aligns by real-token index."""
    model, layer, heads = tiny_llama, 1, [0, 3]
    seqs = model.tokenize(REFERENCE)
    zs = [_z_by_hand(model, s, layer) for s in seqs]
    longest = max(len(s) for s in seqs)
    by_position = torch.stack([torch.stack([z[t] for z in zs if t < len(z)]).mean(0) for t in range(longest)])
    pooled = torch.cat([z[1:] for z in zs]).mean(0)
    batch = _left_batch(model)
    assert batch.lengths.max() > longest  # the pooled mean is used

    def means(z, ctx):
        out = torch.empty(z.shape[0], z.shape[1], len(heads), z.shape[-1])
        for b in range(ctx.batch.size):
            off = int(ctx.batch.offsets[b])
            for col in range(z.shape[1]):
                t = max(col - off, 0)
                out[b, col] = (by_position[t] if t < longest else pooled)[heads]
        return out

    with model.intervene(ByHand("z", layer, set_heads(heads, means))):
        by_hand = model.forward(batch)
    ablation = HeadAblation([(layer, h) for h in heads], mode="mean", reference=REFERENCE)
    with model.intervene(ablation):
        ablated = model.forward(batch)
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=1e-5)
    assert (ablated - model.forward(batch)).abs().max() > 1e-3
    cached = ablation.mean_z(model)[layer].by_position
    with model.intervene(ablation):  # computed once per model, then reused
        model.forward(batch)
    assert ablation.mean_z(model)[layer].by_position is cached


def test_resample_ablation_equals_z_from_the_source_by_hand(tiny_llama):
    """Row b reads source b mod n of a seeded order of the reference texts, joined and cut to
    the batch's length, at the same real-token positions; a source equal to the row is skipped."""
    model, layer, heads, seed = tiny_llama, 0, [1], 5
    order = list(range(len(REFERENCE)))
    random.Random(seed).shuffle(order)
    inputs = ["A medium-length input for the resample test.", REFERENCE[order[1]], "Mid"]  # row 1 = source 1's text
    batch = model.batch(model.tokenize(inputs), "left")
    sources = []
    for s in range(len(REFERENCE)):
        joined = "\n\n".join(REFERENCE[order[(s + j) % len(REFERENCE)]] for j in range(len(REFERENCE)))
        sources.append(model.tokenize([joined])[0][: batch.width])
    picks = [0, 2, 2]  # row b reads source b mod 3, but row 1 is source 1's own text: the next one
    zs = [_z_by_hand(model, sources[s], layer) for s in picks]

    def resampled(z, ctx):
        out = torch.empty(z.shape[0], z.shape[1], len(heads), z.shape[-1])
        for b in range(ctx.batch.size):
            off = int(ctx.batch.offsets[b])
            for col in range(z.shape[1]):
                out[b, col] = zs[b][max(col - off, 0), heads]
        return out

    with model.intervene(ByHand("z", layer, set_heads(heads, resampled))):
        by_hand = model.forward(batch)
    ablation = HeadAblation([(layer, h) for h in heads], mode="resample", reference=REFERENCE, seed=seed)
    with model.intervene(ablation):
        ablated = model.forward(batch)
    assert ablation.resample_assignment(model, batch) == picks
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=1e-5)
    assert (ablated - model.forward(batch)).abs().max() > 1e-3


def test_resample_needs_enough_reference_text(tiny_llama):
    batch = _left_batch(tiny_llama)
    with tiny_llama.intervene(HeadAblation([(0, 0)], mode="resample", reference=["tiny"])):
        with pytest.raises(PosbenchError, match="resample ablation needs .* tokens of reference text"):
            tiny_llama.forward(batch)


def test_specs_params_and_errors(tiny_llama):
    iv = parse_intervention("ablate-heads:3.1,4.*;mode=mean;kv=true")
    assert (iv.heads, iv.whole_layers, iv.mode, iv.kv) == ([(3, 1)], [4], "mean", True)
    assert iv.params() == {"heads": ["3.1", "4.*"], "mode": "mean", "kv": True, "reference": "natural-text corpus"}
    assert parse_intervention("ablate-heads:0.1;mode=resample;seed=7").params()["seed"] == 7
    assert parse_intervention("ablate-heads:3.1,4.2").params() == {"heads": ["3.1", "4.2"], "mode": "zero"}
    with pytest.raises(BadOptionError, match="bad option mode='avg'.*zero\\|mean\\|resample"):
        parse_intervention("ablate-heads:1.1;mode=avg")
    with pytest.raises(BadOptionError, match="bad option seed='-1'"):
        parse_intervention("ablate-heads:1.1;seed=-1")
    with pytest.raises(BadOptionError, match="option 'heads' is given twice"):
        parse_intervention("ablate-heads:1.1;heads=2")
    with pytest.raises(BadOptionError, match="malformed head '1.x'"):
        parse_intervention("ablate-heads:1.x")
    with pytest.raises(BadOptionError, match="option 'heads' is given twice"):
        parse_intervention("ablate-heads:1.1;2.2")
    with pytest.raises(HeadIndexError, match="kv head 2 out of range: tiny-llama has 2 key/value heads"):
        with tiny_llama.intervene(HeadAblation([(0, 2)], kv=True)):
            pass
    with pytest.raises(HeadIndexError, match="layer 5 out of range"):
        with tiny_llama.intervene(HeadAblation([(5, "*")])):
            pass


@pytest.mark.embedded
def test_kv_ablation_on_smollm2_equals_zeroed_group_columns(smollm2):
    """GQA 9/3: kv head 2 of layer 10 feeds query heads 6, 7, 8."""
    model, layer = smollm2, 10
    batch = model.batch(model.tokenize(["Position shapes what a model does.", "Short"]), "left")
    iv = HeadAblation([(layer, 2)], kv=True)
    assert iv.query_heads(model) == {layer: [6, 7, 8]}
    with model.intervene(iv):
        ablated = model.forward(batch)
    o = model.hf_model.model.layers[layer].self_attn.o_proj.weight
    d = model.d_head
    saved = o.detach().clone()
    with torch.no_grad():
        o[:, 6 * d : 9 * d] = 0.0
        by_hand = model.forward(batch)
        o.copy_(saved)
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=1e-4)
