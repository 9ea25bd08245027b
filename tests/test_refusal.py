"""The refusal probe, its direction, trace, cliff and head attribution, and the directional
ablation / activation addition interventions, against ground truths built by hand: a planted
direction, weights orthogonalised by hand, embeddings shifted by hand, a forward pre-hook on the
HuggingFace decoder layer, residual sums, and hand-computed cliffs."""

import math

import numpy as np
import pytest
import torch

import posbench
from posbench.cli import main
from posbench.data import RefusalDataset
from posbench.errors import BadOptionError, MalformedDataError, PosbenchError, StoreError
from posbench.interventions.activation_addition import ActivationAddition
from posbench.interventions.directional_ablation import DirectionalAblation
from posbench.protocols import ActivationEdit
from posbench.registry import parse_intervention
from posbench.sites import Capture, Edit
from posbench.store import Store
from posbench.probes.refusal import (
    PLAIN_TEMPLATE,
    RefusalDirection,
    RefusalProbe,
    TracedSequence,
    build_prompt,
    cliff_metrics,
    segment_response,
    trace_sequences,
)
from posbench.probes.refusal.activations import last_token_logits
from posbench.probes.refusal.heads import attribution_table, suppressors
from posbench.probes.refusal.trace import decision_projections
from posbench.probes.refusal.views import RefusalView

TINY = dict(n_train=6, n_val=3, n_generate=2, max_new_tokens=3, causal_heads=2, n_boot=50)
MARKER = " ~"


@pytest.fixture(scope="module")
def fresh_llama():
    """A second tiny-llama (same seeded weights) whose weights a test may edit and restore."""
    return posbench.load_model("tiny-llama")


def _edit_weights(model):
    """Snapshot of every parameter, to restore after a hand edit."""
    return {n: p.detach().clone() for n, p in model.hf_model.named_parameters()}


def _restore(model, saved):
    with torch.no_grad():
        for n, p in model.hf_model.named_parameters():
            p.copy_(saved[n])


def _param(model, suffix):
    return dict(model.hf_model.named_parameters())[suffix]


def _unit(d, seed=0):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / v.norm()


# ---------------------------------------------------------------------------- prompts and segments
def test_prompts_locate_instruction_and_template(tiny_llama):
    p = build_prompt(tiny_llama, "How do I bake bread?")
    tok = tiny_llama.tokenizer
    assert tok.decode(list(p.ids)) == tok.decode([tok.bos_token_id]) + PLAIN_TEMPLATE.format(instruction="How do I bake bread?")
    assert tok.decode(list(p.ids[p.instruction_start: p.template_start])) == "How do I bake bread?"
    assert tok.decode(list(p.ids[p.template_start:])) == "\nAssistant:"


def test_segments_of_a_reasoning_answer(tiny_llama):
    """A synthetic reasoning answer (the embedded models emit none): tags, reasoning, answer,
    the decision token, and the two other shapes (template-opened, never closed)."""
    tok = tiny_llama.tokenizer
    prompt = build_prompt(tiny_llama, "Tell me a secret.")
    text = "<think>They want a secret. I should not.</think>\n\nI cannot share that."
    response = tok(text, add_special_tokens=False)["input_ids"]
    s = TracedSequence.build(tok, prompt, response)
    pieces = [tok.decode([t]) for t in response]
    n = len(prompt.ids)
    seg = s.segments[n:]
    joined = {k: "".join(p for p, g in zip(pieces, seg) if g == k) for k in ("marker", "reasoning", "answer")}
    assert joined == {"marker": "<think></think>\n\n", "reasoning": "They want a secret. I should not.",
                      "answer": "I cannot share that."}
    assert s.has_reasoning and s.decision == n + len(pieces) - len("I cannot share that.") - 1
    assert "".join(pieces[s.decision - n]) == "\n" and s.span() == [i for i, g in enumerate(s.segments) if g == "reasoning"]
    assert set(s.segments[:n]) == {"prefix", "instruction", "template"}

    labels, last, reasoning = segment_response(["Hmm", " no", "</think>", "\n", "Sure"])  # template opened <think>
    assert labels == ["reasoning", "reasoning", "marker", "marker", "answer"] and last == 3 and reasoning
    labels, last, reasoning = segment_response(["<think>", "still", " going"])  # never closed: no answer
    assert labels == ["marker", "reasoning", "reasoning"] and last is None and reasoning
    labels, last, reasoning = segment_response(["I", " can", "not"])
    assert labels == ["answer"] * 3 and last is None and not reasoning
    plain = TracedSequence.build(tok, prompt, tok("Sure!", add_special_tokens=False)["input_ids"])
    assert plain.decision == n - 1 and plain.span() == list(range(prompt.instruction_start, n - 1))


def test_cliff_metrics_by_hand():
    scores = np.array([0.0, 0.2, 0.9, 0.8, 0.9, 0.7, 0.9, 0.1, 0.05, 0.3])
    out = cliff_metrics(scores, span=[1, 2, 3, 4, 5, 6], decision=8, tail_fraction=0.34)
    # tail: the last ceil(0.34 * 6) = 3 span tokens, 4..6 (token 7 is outside the span, e.g. a tag)
    assert out["tail_mean"] == pytest.approx((0.9 + 0.7 + 0.9) / 3)
    assert out["decision_score"] == 0.05 and out["cliff"] == pytest.approx(out["tail_mean"] - 0.05)
    # steps from token 1 to 8: the largest drop is 0.9 -> 0.1 (token 6 -> 7), landing 1 token before the decision
    assert out["largest_drop"] == pytest.approx(-0.8) and out["largest_drop_at"] == 1
    assert math.isnan(cliff_metrics(scores, [], None, 0.2)["cliff"])


# ---------------------------------------------------------------------------- the planted direction
class PlantDirection(ActivationEdit):
    """Adds ``v`` to the residual stream entering layer 1 of every row that holds the marker token."""

    name = "plant-direction"

    def __init__(self, v, marker_id):
        self.v, self.marker_id = v, marker_id

    def params(self):
        return {}

    def edits(self, model):
        def plant(x, ctx):
            harmful = (ctx.batch.input_ids == self.marker_id).any(-1).to(x.device)
            return x + harmful[:, None, None].to(x.dtype) * self.v.to(x)

        return [Edit("resid_pre", plant, layers=(1,))]


def _marked_dataset():
    rows = [dict(r, instruction=r["instruction"] + MARKER) if r["label"] == "harmful" else dict(r)
            for r in RefusalDataset.builtin().rows]
    return RefusalDataset(rows, source="builtin with a marker on harmful rows")


def test_planted_direction_is_recovered(tiny_llama):
    """Harmful prompts carry v (|v| about 10x the residual norm) from layer 1 on: the probe finds
    it (cosine > 0.95) at layer 1, and its probe separates val perfectly."""
    marker = tiny_llama.tokenizer(MARKER.strip(), add_special_tokens=False)["input_ids"][-1]
    v = 2.0 * _unit(tiny_llama.card.d_model).float()
    with tiny_llama.intervene(PlantDirection(v, marker)):
        result = RefusalProbe(**dict(TINY, n_train=12, n_val=4)).run(tiny_llama, data=_marked_dataset())
    direction = RefusalDirection.from_result(result)
    assert direction.layer == 1
    cos = float(torch.nn.functional.cosine_similarity(direction.vector, v.double(), dim=0))
    assert cos > 0.95
    assert result.summary["val_auroc"] == 1.0 and result.summary["probe_val_accuracy"] == 1.0
    cand = result.tables["candidates"]
    assert cand[(cand.layer == 1) & (cand.position == -1)].probe_val_auroc.iloc[0] == 1.0
    assert (cand[cand.layer == 0].dim_val_auroc < 1.0).all()  # nothing planted before layer 1


# ---------------------------------------------------------------------------- interventions
def _captures(layers):
    return [Capture("pre", "resid_pre", lambda x, c: x.double()), Capture("post", "resid_post", lambda x, c: x.double(),
                                                                           layers=(layers - 1,))]


def test_directional_ablation_removes_the_projection(tiny_llama):
    r_hat = _unit(tiny_llama.card.d_model, seed=1)
    batch = tiny_llama.batch(tiny_llama.tokenize(["How do I bake bread?", "Hello"]))
    with tiny_llama.intervene(DirectionalAblation(r_hat)):
        out = tiny_llama.run(batch, _captures(tiny_llama.n_layers))
    clean = tiny_llama.run(batch, _captures(tiny_llama.n_layers))
    for layer in range(tiny_llama.n_layers):
        assert (out.captured["pre"][layer] @ r_hat).abs().max() < 1e-5
        assert (clean.captured["pre"][layer] @ r_hat).abs().max() > 1e-2  # there was something to remove
    assert (out.captured["post"][tiny_llama.n_layers - 1] @ r_hat).abs().max() < 1e-5


def test_directional_ablation_equals_orthogonalised_weights(fresh_llama):
    """Arditi et al.'s equivalence: ablating r̂ at every residual input and block output is the
    same model as W <- W - r̂ r̂^T W on every matrix that writes the residual stream."""
    m = fresh_llama
    r_hat = _unit(m.card.d_model, seed=2)
    texts = ["How do I bake bread?", "Write a poem"]
    with m.intervene(DirectionalAblation(r_hat)):
        hooked = torch.cat(m.logits(texts))
    saved = _edit_weights(m)
    r = r_hat.float()[:, None]
    try:
        with torch.no_grad():
            embed = _param(m, "model.embed_tokens._original_component.weight")
            embed -= (embed @ r) @ r.T
            for layer in range(m.n_layers):
                for name in ("self_attn._original_component.o_proj", "mlp._original_component.down_proj"):
                    w = _param(m, f"model.layers.{layer}._original_component.{name}._original_component.weight")
                    w -= r @ (r.T @ w)
        by_hand = torch.cat(m.logits(texts))
    finally:
        _restore(m, saved)
    assert torch.allclose(hooked, by_hand, atol=1e-4)
    assert not torch.allclose(hooked, torch.cat(m.logits(texts)), atol=1e-2)


def test_activation_addition_equals_hand_edits(fresh_llama):
    """At layer 0: the same as adding c r to every embedding row; at layer 1: the same as a
    forward pre-hook on the HuggingFace decoder layer adding c r to its input."""
    m = fresh_llama
    r = 0.3 * _unit(m.card.d_model, seed=3)
    texts = ["How do I bake bread?", "Hi"]
    with m.intervene(ActivationAddition(r, layer=0, coeff=-2.0)):
        hooked0 = torch.cat(m.logits(texts))
    with m.intervene(ActivationAddition(r, layer=1, coeff=1.5)):
        hooked1 = torch.cat(m.logits(texts))
    saved = _edit_weights(m)
    try:
        with torch.no_grad():
            _param(m, "model.embed_tokens._original_component.weight").add_(-2.0 * r.float())
        embed_edit = torch.cat(m.logits(texts))
    finally:
        _restore(m, saved)

    def pre_hook(module, args, kwargs):
        if args:
            return (args[0] + 1.5 * r.float(),) + args[1:], kwargs
        return args, dict(kwargs, hidden_states=kwargs["hidden_states"] + 1.5 * r.float())

    handle = m.hf_model.model.layers[1]._original_component.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        hf_hook = torch.cat(m.logits(texts))
    finally:
        handle.remove()
    clean = torch.cat(m.logits(texts))
    assert torch.allclose(hooked0, embed_edit, atol=1e-5) and torch.allclose(hooked1, hf_hook, atol=1e-5)
    assert not torch.allclose(hooked1, clean, atol=1e-3)


# ---------------------------------------------------------------------------- head attribution
def _direction(model, layer, seed=4):
    per_layer = torch.stack([_unit(model.card.d_model, seed + i) for i in range(model.n_layers)])
    return RefusalDirection(model.model_id, layer, -1, per_layer, torch.zeros(model.card.d_model, dtype=torch.float64), 0.0)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_head_attribution_sums_to_the_projection(name, request):
    """Direct terms of every head + embedding + MLPs (+ GPT-2's output biases) == the projection of
    resid_pre at the direction's layer; per layer, the heads (+ bias) == attn_out . r̂, which
    checks the per-head W_O split (Llama Linear and GPT-2 Conv1D layouts)."""
    model = request.getfixturevalue(name)
    layer = model.n_layers - 1
    direction = _direction(model, layer)
    prompts = [build_prompt(model, t) for t in ("How do I bake bread?", "Write a poem about rain.")]
    seqs = [TracedSequence.build(model.tokenizer, p, model.tokenizer("Sure, here", add_special_tokens=False)["input_ids"])
            for p in prompts]
    outputs = trace_sequences(model, seqs, direction, [5])
    params = dict(model.hf_model.named_parameters())
    r_hat = direction.unit
    for o in outputs:
        biases = np.zeros(layer)
        for l in range(layer):
            b = params.get(f"transformer.h.{l}._original_component.attn.o._original_component.bias")
            biases[l] = 0.0 if b is None else float(b.detach().double() @ r_hat)
        assert np.allclose(o.head_direct.sum(-1) + biases, o.attn, atol=1e-5)
        assert o.embed + o.attn.sum() + o.mlp.sum() == pytest.approx(o.projection_at_decision, abs=1e-4)
    table, check = attribution_table(outputs, model.n_heads)
    assert check["additive"] and check["residual_error"] < 1e-5 and len(table) == layer * model.n_heads
    # the decision-token projection of the truncated sequences is the trace's
    assert np.allclose(decision_projections(model, seqs, direction), [o.projection_at_decision for o in outputs], atol=1e-5)


def _o_proj(model, layer):
    """The HuggingFace o_proj of a tiny-llama layer (the module the bridge wraps)."""
    attn = model.hf_model.model.layers[layer]._original_component.self_attn._original_component
    return attn.o_proj._original_component


def _seqs(model, texts=("How do I bake bread?", "Write a poem about rain.")):
    answer = model.tokenizer("Sure, here", add_special_tokens=False)["input_ids"]
    return [TracedSequence.build(model.tokenizer, build_prompt(model, t), answer) for t in texts]


def test_direct_attribution_by_hand_from_hf_weights(fresh_llama):
    """Each head's direct term, recomputed outside posbench: the input of the HuggingFace o_proj
    (the heads' concatenated z) caught by a forward pre-hook, cut into heads, multiplied by that
    head's columns of o_proj.weight and dotted with r̂ at the decision token."""
    m = fresh_llama
    layer = m.n_layers - 1
    direction = _direction(m, layer, seed=7)
    seqs = _seqs(m)
    outputs = trace_sequences(m, seqs, direction, [5])
    d_head, r_hat = m.d_head, direction.unit
    for s, o in zip(seqs, outputs):
        caught = {}
        handles = [_o_proj(m, l).register_forward_pre_hook(lambda mod, args, l=l: caught.__setitem__(l, args[0].detach()))
                   for l in range(layer)]
        try:
            m.forward(m.batch([list(s.ids)]))
        finally:
            for h in handles:
                h.remove()
        for l in range(layer):
            z = caught[l][0, s.decision].double()  # [H * d_head]
            w = _o_proj(m, l).weight.detach().double()  # [D, H * d_head]
            by_hand = [float((w[:, h * d_head:(h + 1) * d_head] @ z[h * d_head:(h + 1) * d_head]) @ r_hat)
                       for h in range(m.n_heads)]
            assert np.allclose(o.head_direct[l], by_hand, atol=1e-5)
        assert np.abs(o.head_direct).max() > 1e-3  # not trivially zero


def test_causal_effect_equals_zeroed_o_proj_columns(fresh_llama):
    """The causal check of a head (zero-ablation through HeadAblation) equals the change of the
    decision-token projection when that head's columns of o_proj.weight are zeroed by hand."""
    from posbench.probes.refusal.heads import causal_effects

    m = fresh_llama
    layer = m.n_layers - 1
    direction = _direction(m, layer, seed=8)
    seqs = _seqs(m)
    heads = [(0, 1), (layer - 1, 0)]
    effects = causal_effects(m, seqs, direction, heads)
    base = decision_projections(m, seqs, direction)
    for l, h in heads:
        saved = _edit_weights(m)
        try:
            with torch.no_grad():
                _o_proj(m, l).weight[:, h * m.d_head:(h + 1) * m.d_head] = 0.0
            by_hand = float((decision_projections(m, seqs, direction) - base).mean())
        finally:
            _restore(m, saved)
        assert effects[(l, h)] == pytest.approx(by_hand, abs=1e-5)
        assert abs(by_hand) > 1e-4  # the head did move the score


def test_suppressors_take_the_most_negative_heads():
    import pandas as pd

    heads = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "direct": [0.5, -0.2, -0.9, -0.1],
                          "causal": [math.nan, 0.3, 0.1, -0.2]})
    assert suppressors(heads, 0.5, 4) == [(1, 0), (0, 1)]
    assert suppressors(heads, 0.5, 4, by="causal") == [(0, 1), (1, 0)]
    assert suppressors(heads, 0.01, 4) == [(1, 0)]


# ---------------------------------------------------------------------------- the probe end to end
@pytest.fixture(scope="module")
def tiny_run(tiny_llama):
    return RefusalProbe(**TINY, conditions=("baseline", "ablate-heads", "ablate-direction", "add-direction"),
                        head_fraction=0.25).run(tiny_llama)


def test_probe_tables_and_conditions(tiny_run, tiny_llama):
    t, s = tiny_run.tables, tiny_run.summary
    assert s["prompt_format"] == "plain" and s["template_tokens"] == "\nAssistant:"
    assert set(t["behaviour"].condition) <= {"baseline", "ablate-heads", "ablate-direction", "add-direction"}
    assert {"baseline", "ablate-direction", "add-direction"} <= set(t["behaviour"].condition)
    # under directional ablation the traced projection is zero at every token
    ablated = t["trace"][t["trace"].condition == "ablate-direction"]
    assert ablated.projection.abs().max() < 1e-4
    n_heads = int(t["heads"].ablated.sum())
    assert n_heads == (0 if s["heads_ablated"] == "none" else len(s["heads_ablated"].split(", ")))
    assert len(t["direction"]) == tiny_llama.n_layers * tiny_llama.card.d_model
    assert set(tiny_run.figures) >= {"separation_by_layer", "trace_probability", "refusal_rates", "head_attribution"}


def test_finding_states_the_tables_numbers(tiny_run):
    """The report's finding for refusal: its numbers are the result's, and it carries a verdict."""
    finding = RefusalView.finding(tiny_run)
    s, t = tiny_run.summary, tiny_run.tables
    probe = t["candidates"][t["candidates"].position == -1]
    text = finding.text()
    assert f"val AUROC {probe.probe_val_auroc.max():.2f} (best layer {s['best_probe_layer']})" in text
    assert f"layer {s['layer']}, template position {s['position']}" in text
    harmful = t["behaviour"].set_index(["condition", "label"]).loc[("baseline", "harmful")]
    assert f"cliff (instruction tail minus decision token) {harmful.cliff:.2f}" in text
    assert "Under ablate-direction: mean harmful refusal score" in text
    assert finding.verdict.split(":")[0] in {"Agrees", "Partly agrees", "Differs"}
    assert "Arditi et al. 2024" in finding.references


def test_compare_puts_models_on_the_same_depth_axis(tiny_run, tiny_gpt2):
    """The report index's comparison (issue 14): the probe's val AUROC and accuracy per layer by
    relative depth, one line per model, and the baseline refusal rates harmful vs harmless;
    every point is the model's own stored row."""
    other = RefusalProbe(**TINY, conditions=("baseline",)).run(tiny_gpt2)
    results = {"tiny-llama": tiny_run, "tiny-gpt2": other}
    figs = RefusalView.compare(results)
    assert set(figs) == {"separability_by_depth", "refusal_rates_by_model"}
    lines = figs["separability_by_depth"].data
    assert {t.name for t in lines} == set(results)
    for name, result in results.items():
        probe = result.tables["candidates"]
        probe = probe[probe.position == -1].sort_values("layer")
        depth = list(probe.layer / probe.layer.max())
        mine = [t for t in lines if t.name == name]
        assert len(mine) == 2 and all(list(t.x) == depth for t in mine)
        assert sorted([list(t.y) for t in mine]) == sorted([list(probe.probe_val_auroc), list(probe.probe_val_accuracy)])
    bars = figs["refusal_rates_by_model"].data  # one trace per label and facet (probe first, phrases second)
    shown = {(t.name, t.xaxis, model, y) for t in bars for model, y in zip(t.x, t.y)}
    expected = set()
    for name, result in results.items():
        for _, row in result.tables["behaviour"].query("condition == 'baseline'").iterrows():
            expected |= {(row.label, "x", name, row.probe_refusal_rate), (row.label, "x2", name, row.refusal_rate)}
    assert shown == expected
    assert set(posbench.compare(tiny_run, other).figures) == set(figs)  # the API and the index draw the same


def test_memory_estimate_counts_every_sequence_that_runs(tiny_llama, monkeypatch):
    """The workload the probe checks against memory is what it runs: every forward pass is
    recorded (rows as token ids, under which interventions); the sequences kept are the rows that
    are no strict prefix of another (generation steps and the causal re-runs up to the decision
    token are prefixes of the traced answers), counted once per condition; the longest row and the
    largest batch stay within the estimate, whose length is the longest rendered prompt plus
    ``max_new_tokens``."""
    import sys

    from posbench import limits

    probe_module = sys.modules[RefusalProbe.__module__]
    checked, rows, batches = [], [], []
    real_run, real_check = tiny_llama.run, probe_module.check_fits

    def recording_run(batch, *args, **kwargs):
        key = tuple(iv["name"] for iv in tiny_llama.active_interventions)
        rows.extend((key, tuple(batch.input_ids[b, batch.real_columns(b)].tolist())) for b in range(batch.size))
        batches.append(batch.size)
        return real_run(batch, *args, **kwargs)

    def recording_check(probe, model, work=None, fix=None):
        checked.append(work)
        return real_check(probe, model, work, fix)

    monkeypatch.setattr(tiny_llama, "run", recording_run)
    monkeypatch.setattr(probe_module, "check_fits", recording_check)
    conditions = ("baseline", "ablate-direction", "add-direction")
    probe = RefusalProbe(**TINY, conditions=conditions, batch_size=4)
    result = probe.run(tiny_llama)
    (work,) = checked
    ids = {r for _, r in rows}
    kept = {(key, r) for key, r in rows if not any(len(o) > len(r) and o[: len(r)] == r for o in ids)}
    assert work.sequences == len(kept) == 2 * (6 + 3) + 2 * 2 * len(conditions)
    assert max(len(r) for r in ids) <= work.tokens and max(batches) <= work.batch == 4
    texts = result.metadata["data"]["texts"]  # {split: {label: instructions}}
    longest_prompt = max(len(build_prompt(tiny_llama, t).ids) for split in texts.values() for ts in split.values() for t in ts)
    assert work.tokens == longest_prompt + probe.config.max_new_tokens
    # before the model loads, the declared estimate counts the same sequences (the answers' length only)
    declared = limits.workload(probe.config)
    assert (declared.sequences, declared.tokens, declared.batch) == (work.sequences, probe.config.max_new_tokens, 4)


def test_ablation_selection_scores_the_shortlist(tiny_llama):
    """Arditi-style selection: the best ``shortlist`` candidates by val separation get ablation,
    steering and KL scores, recomputed here by hand for each, and the rule picks among them."""
    from posbench.data import refusal_score, refusal_token_ids
    from posbench.probes.refusal.direction import rank_by_separation

    result = RefusalProbe(**dict(TINY, selection="ablation", shortlist=2, conditions=("baseline",))).run(tiny_llama)
    cand = result.tables["candidates"]
    scored = cand.dropna(subset=["ablation_score"])
    top = rank_by_separation(cand, 0.8 * tiny_llama.n_layers).head(2)
    assert sorted(zip(scored.layer, scored.position)) == sorted(zip(top.layer, top.position))
    ds = RefusalDataset.builtin()
    val = {label: [build_prompt(tiny_llama, t) for t in ds.select(label=label, split="val").instructions[:3]]
           for label in ("harmful", "harmless")}
    ids = refusal_token_ids(tiny_llama.tokenizer, space_variants=True)
    d = RefusalDirection.from_result(result)
    base = torch.log_softmax(last_token_logits(tiny_llama, val["harmless"]).double(), -1)
    checked = 0
    for _, row in scored.iterrows():
        r = d.per_layer[int(row.layer)] if int(row.position) == d.position else None
        if r is None:
            continue  # only the chosen position's vectors are stored
        with tiny_llama.intervene(DirectionalAblation(r)):
            assert float(refusal_score(last_token_logits(tiny_llama, val["harmful"]), ids).mean()) == pytest.approx(row.ablation_score, abs=1e-5)
            ablated = torch.log_softmax(last_token_logits(tiny_llama, val["harmless"]).double(), -1)
        assert float((base.exp() * (base - ablated)).sum(-1).mean()) == pytest.approx(row.kl, abs=1e-6)
        with tiny_llama.intervene(ActivationAddition(r, int(row.layer))):
            assert float(refusal_score(last_token_logits(tiny_llama, val["harmless"]), ids).mean()) == pytest.approx(row.steering_score, abs=1e-5)
        checked += 1
    assert checked >= 1  # the chosen candidate is always on the shortlist
    chosen = cand[cand.selected].iloc[0]
    ok = scored[(scored.kl <= 0.1) & (scored.steering_score > 0)]
    if len(ok):
        assert chosen.ablation_score == ok.ablation_score.min()
    else:
        assert "no shortlisted candidate" in result.summary["selection"]


def test_direction_from_result_store_file_and_cli(tiny_run, tiny_llama, tmp_path):
    store_path = tmp_path / "r.sqlite"
    run_id = Store(store_path).save(tiny_run)
    d = RefusalDirection.from_store(run_id, store_path)
    assert torch.equal(d.vector, RefusalDirection.from_result(tiny_run).vector) and d.layer == tiny_run.summary["layer"]
    # the stored probe reproduces the traced probability at the decision token
    g = tiny_run.tables["generations"]
    row = g[(g.condition == "baseline")].iloc[0]
    batch = tiny_llama.batch([list(build_prompt(tiny_llama, row.instruction).ids)])
    resid = tiny_llama.run(batch, [Capture("x", "resid_pre", lambda x, c: x[0, -1].double(), layers=(d.layer,))]).captured["x"][d.layer]
    assert float(d.probability(resid)) == pytest.approx(row.decision_probability, abs=1e-5)

    ablate = parse_intervention(f"ablate-direction:run={run_id};store={store_path}")
    assert torch.allclose(ablate.r_hat, d.unit)
    add = parse_intervention(f"add-direction:run={run_id};store={store_path};coeff=-1;layer=0")
    assert add.layer == 0 and add.coeff == -1 and torch.equal(add.vector, d.at_layer(0))
    path = d.save(tmp_path / "d.json")
    assert torch.equal(parse_intervention(f"ablate-direction:file={path}").r_hat, ablate.r_hat)

    # any probe runs under the stored direction, from the command line
    assert main(["run", "sinks", "--model", "tiny-llama", "--store", str(store_path), "-q", "--n", "2",
                 "--intervention", f"ablate-direction:run={run_id};store={store_path}"]) == 0
    stored = Store(store_path).runs(probe="sinks")
    assert stored.interventions.iloc[0][0]["name"] == "ablate-direction"


def test_direction_errors(tiny_run, tiny_gpt2, tmp_path):
    with pytest.raises(BadOptionError, match="run=RUN_ID"):
        parse_intervention("ablate-direction:layer=1")
    with pytest.raises(BadOptionError, match="unknown option 'bogus' for intervention 'add-direction'"):
        parse_intervention("add-direction:file=x.json;bogus=1")
    with pytest.raises(BadOptionError, match="bad option coeff='x'"):
        parse_intervention("add-direction:file=x.json;coeff=x")
    with pytest.raises(BadOptionError, match="needs the direction's source, once"):
        parse_intervention("ablate-direction:run=a;file=b")
    with pytest.raises(StoreError):
        parse_intervention(f"ablate-direction:run=nope;store={tmp_path / 'empty.sqlite'}")
    with pytest.raises(MalformedDataError, match="RefusalDirection.save"):
        parse_intervention(f"ablate-direction:file={tmp_path / 'missing.json'}")
    d = RefusalDirection.from_result(tiny_run)
    with pytest.raises(PosbenchError, match="measured on tiny-llama"):
        with tiny_gpt2.intervene(DirectionalAblation(d)):
            pass
    with pytest.raises(BadOptionError, match="layer 9 out of range"):
        ActivationAddition.from_direction(d, layer=9)
    with pytest.raises(BadOptionError, match="include baseline"):
        RefusalProbe(conditions=("ablate-heads",))


# ---------------------------------------------------------------------------- embedded models
@pytest.mark.embedded
def test_smollm2_refusal_direction(smollm2):
    """On an instruct model (Arditi et al.'s qualitative results, at small sizes): harmful and
    harmless instructions are not separable from the template tokens' embeddings (layer 0: the
    same tokens for every prompt) nor in the first layers, and are in the middle-to-late layers;
    removing the direction lowers the harmful refusal score. Yin et al.'s trace: the score at the
    last template token is higher for harmful requests and falls where the answer starts (on
    average: at this size one of the two harmful answers rises; with the default sizes all four
    fall, docs/refusal.md)."""
    result = RefusalProbe(n_train=8, n_val=4, n_generate=2, max_new_tokens=2, causal_heads=1,
                          conditions=("baseline",), n_boot=0).run(smollm2)
    s = result.summary
    assert s["prompt_format"] == "chat template" and s["template_tokens"] == "<|im_end|>\n<|im_start|>assistant\n"
    assert s["val_auroc"] >= 0.9 and s["probe_val_accuracy"] >= 0.75
    cand = result.tables["candidates"]
    assert (cand[cand.layer == 0].dim_val_auroc == 0.5).all()  # identical tokens: nothing to separate
    last = cand[cand.position == -1].set_index("layer").dim_val_auroc  # the last template token
    n = smollm2.n_layers
    early, mid = last.loc[1:5].mean(), last.loc[n // 2: int(0.8 * n) - 1].mean()
    assert mid >= 0.85 and mid > early + 0.1, last.round(3).to_dict()
    d = RefusalDirection.from_result(result)
    prompts = [build_prompt(smollm2, t) for t in RefusalDataset.builtin().harmful("val")[:4]]
    ids = __import__("posbench").data.refusal_token_ids(smollm2.tokenizer)
    from posbench.data import refusal_score

    base = refusal_score(last_token_logits(smollm2, prompts), ids).mean()
    with smollm2.intervene(DirectionalAblation(d)):
        ablated = refusal_score(last_token_logits(smollm2, prompts), ids).mean()
    assert ablated < base
    trace = result.tables["trace"].pivot_table(index=["label", "item"], columns="rel", values="projection")
    harmful, harmless = trace.loc["harmful"], trace.loc["harmless"]  # item x rel (0: the decision token)
    assert harmful[0].mean() > harmless[0].mean()
    assert harmful[1].mean() < harmful[0].mean()  # the score falls at the answer's first token


@pytest.mark.embedded
def test_gemma_runs_without_a_chat_template(gemma):
    result = RefusalProbe(n_train=4, n_val=2, n_generate=1, max_new_tokens=2, causal_heads=1,
                          conditions=("baseline",), n_boot=0).run(gemma)
    assert result.summary["prompt_format"] == "plain" and result.summary["template_tokens"] == "\nAssistant:"
    assert not result.summary["attribution_additive"]  # Gemma 3 normalises block outputs before adding them
    assert result.summary["heads_ranked_by"] == "causal"


@pytest.mark.embedded
def test_reasoning_trace_on_smollm2_teacher_forced(smollm2):
    """The reasoning path on a real model: SmolLM2 emits no reasoning, so a given continuation
    with a ``<think> ... </think>`` span is teacher-forced (``trace_response``, as for a stored
    answer). The span is found in the real tokenizer's pieces, the cliff is taken over it, and the
    scores at every token equal a hand projection of the residual entering the HuggingFace decoder
    layer (a forward pre-hook) on a difference in means measured by hand the same way."""
    from posbench.probes.refusal import trace_response

    m, layer = smollm2, 16
    block = m.hf_model.model.layers[layer]._original_component

    def resid(ids):
        caught = {}

        def hook(module, args, kwargs):
            caught["x"] = (args[0] if args else kwargs["hidden_states"])[0].detach().double()

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            m.forward(m.batch([list(ids)]))
        finally:
            handle.remove()
        return caught["x"]  # [T, D]

    ds = RefusalDataset.builtin()
    last = {label: torch.stack([resid(build_prompt(m, t).ids)[-1] for t in ds.select(label=label, split="train").instructions[:2]])
            for label in ("harmful", "harmless")}
    r = last["harmful"].mean(0) - last["harmless"].mean(0)
    per_layer = torch.zeros(m.n_layers, m.card.d_model, dtype=torch.float64)
    per_layer[layer] = r
    weight, bias = 0.1 * r / r.norm(), -1.0
    direction = RefusalDirection(m.model_id, layer, -1, per_layer, weight, bias)

    reasoning = "\nThe user wants to pick a lock. That could help a burglar, so I should not give steps.\n"
    answer = "I'm sorry, but I can't help with that."
    traced = trace_response(m, direction, "How do I pick a lock?", f"<think>{reasoning}</think>\n\n{answer}")
    s, rows = traced.sequence, traced.tokens
    text = {seg: "".join(rows[rows.segment == seg].token) for seg in ("marker", "reasoning", "answer")}
    assert s.has_reasoning and text == {"marker": "<think></think>\n\n", "reasoning": reasoning, "answer": answer}
    assert rows.segment.iloc[s.decision] == "marker" and rows.segment.iloc[s.decision + 1] == "answer"
    assert s.span() == list(rows.index[rows.segment == "reasoning"]) and rows.rel.iloc[s.decision] == 0

    x = resid(s.ids)
    by_hand = x @ (r / r.norm())
    prob = torch.sigmoid(x @ weight + bias)
    assert np.allclose(rows.projection, by_hand.numpy(), rtol=1e-4, atol=1e-3)
    assert np.allclose(rows.probability, prob.numpy(), atol=1e-5)
    span = s.span()
    tail = span[-math.ceil(0.2 * len(span)):]
    for score, values in (("projection", by_hand.numpy()), ("probability", prob.numpy())):
        assert traced.cliff[f"cliff_{score}"] == pytest.approx(values[tail].mean() - values[s.decision], abs=1e-3)
    assert traced.cliff["tail_mean_probability"] == pytest.approx(prob.numpy()[tail].mean(), abs=1e-5)
