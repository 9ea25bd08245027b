"""The hooked model every probe and intervention shares.

``load_model(spec)`` wraps a HuggingFace causal LM in a TransformerLens 4.x ``TransformerBridge``
(eager attention, unprocessed weights) and adds what position analyses need: batching whose
position ids come from the attention mask, a model card, and a stack of active interventions
that every forward pass applies and every result records.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch

from .card import ModelCard, build_card
from .errors import ContextTooLongError, EmptyDataError, PosbenchError, UnknownModelError
from .zoo import ZOO, build_tiny, embedded_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from .protocols import Intervention

log = logging.getLogger("posbench")

Hook = tuple[str, Callable[..., Any]]

# Canonical bridge hook names (TransformerBridge resolves the TransformerLens aliases to these).
HOOKS = {
    "resid_pre": "blocks.{layer}.hook_in",
    "resid_post": "blocks.{layer}.hook_out",
    "q": "blocks.{layer}.attn.q.hook_out",  # [batch, pos, n_heads, d_head], before RoPE
    "k": "blocks.{layer}.attn.k.hook_out",  # [batch, pos, n_kv_heads, d_head], before RoPE
    "v": "blocks.{layer}.attn.v.hook_out",
    "rot_q": "blocks.{layer}.attn.hook_rot_q",  # [batch, pos, n_heads, d_head], after RoPE
    "rot_k": "blocks.{layer}.attn.hook_rot_k",  # [batch, pos, n_kv_heads, d_head]
    "scores": "blocks.{layer}.attn.hook_attn_scores",  # [batch, n_heads, q, k], masked
    "pattern": "blocks.{layer}.attn.hook_pattern",  # [batch, n_heads, q, k]
    "z": "blocks.{layer}.attn.o.hook_in",  # [batch, pos, n_heads, d_head], into W_O
    "attn_out": "blocks.{layer}.attn.hook_out",
    "mlp_out": "blocks.{layer}.mlp.hook_out",
}


class _StopForward(Exception):
    """Raised by a hook to skip the final norm and unembedding when no logits are needed."""


@dataclass
class Batch:
    """Token ids padded to one length, with the mask and the mask-derived position ids.

    ``offsets[b]`` is the index of row b's first real token (its left padding), ``lengths[b]``
    its number of real tokens, so real token r of row b sits at column ``offsets[b] + r``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    padding_side: str

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def real_columns(self, row: int) -> slice:
        start = int(self.offsets[row])
        return slice(start, start + int(self.lengths[row]))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row (pads get 0).

    HuggingFace's forward does not derive these; left padding without them silently shifts
    every position (TransformerLens #1609, nnsight #672).
    """
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp(min=0) * mask


class HookedModel:
    """One hooked model shared by all probes and interventions (see docs/architecture.md)."""

    def __init__(self, bridge, hf_model, tokenizer, model_id: str, source: str):
        self.bridge = bridge
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.card: ModelCard = build_card(model_id, source, hf_model, tokenizer)
        self._interventions: list["Intervention"] = []
        self._fires: dict[str, bool] = {}
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ------------------------------------------------------------------ shape facts
    @property
    def n_layers(self) -> int:
        return self.card.n_layers

    @property
    def n_heads(self) -> int:
        return self.card.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.card.n_kv_heads

    @property
    def d_head(self) -> int:
        return self.card.head_dim

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def hook_name(self, kind: str, layer: int) -> str:
        return HOOKS[kind].format(layer=layer)

    def has_hook(self, name: str) -> bool:
        """Whether ``name`` is a hook point that actually fires in a forward pass (some bridge
        components list hook points they never call, e.g. hook_rot_q on GPT-NeoX)."""
        if name not in self.bridge.hook_dict:
            return False
        if name not in self._fires:
            fired = []
            tiny = self.batch([[self.tokenizer.pad_token_id or 0] * 2])
            self.forward(tiny, [(name, lambda x, hook: fired.append(1) or x)], logits=False)
            self._fires[name] = bool(fired)
        return self._fires[name]

    def rotated_qk_hooks(self, layer: int, sink: Callable[[str, torch.Tensor], None]) -> list[Hook]:
        """Hooks that hand ``sink("q" | "k", tensor [batch, pos, heads, d_head])`` the post-RoPE
        q and k of ``layer``: the bridge's hook_rot_q/k where it has them, otherwise (GPT-NeoX
        style components) q/k rotated here with the layer's own cos/sin (rotate-half layout,
        first ``rotary_dims`` dims only)."""

        def keep(key):
            def hook(x, hook):
                sink(key, x.detach().float())
                return x

            return hook

        if self.has_hook(self.hook_name("rot_q", layer)):
            return [(self.hook_name("rot_q", layer), keep("q")), (self.hook_name("rot_k", layer), keep("k"))]
        if self.card.attn_has_qk_norm:
            raise PosbenchError(
                f"{self.model_id}: the bridge exposes no post-RoPE q/k and the model normalises q/k "
                "before RoPE, so rotated q/k cannot be rebuilt here"
            )
        cache: dict[str, torch.Tensor] = {}

        def keep_raw(key):
            def hook(x, hook):
                cache[key] = x.detach().float()
                if key == "sin":
                    r = cache["cos"].shape[-1]
                    cos, sin = cache["cos"][:, :, None, :], cache["sin"][:, :, None, :]
                    for name in ("q", "k"):
                        x_ = cache[name]
                        rot, rest = x_[..., :r], x_[..., r:]
                        half = r // 2
                        rotated = rot * cos + torch.cat([-rot[..., half:], rot[..., :half]], dim=-1) * sin
                        sink(name, torch.cat([rotated, rest], dim=-1))
                return x

            return hook

        return [
            (self.hook_name("q", layer), keep_raw("q")),
            (self.hook_name("k", layer), keep_raw("k")),
            (f"blocks.{layer}.attn.hook_cos", keep_raw("cos")),
            (f"blocks.{layer}.attn.hook_sin", keep_raw("sin")),
        ]

    def rotary_inv_freq(self, layer: int) -> torch.Tensor | None:
        """The layer's own RoPE ``inv_freq`` (rad/token per rotary pair), or None without RoPE.

        Read from the model's rotary module, so scaled variants (llama3, YaRN) and per-layer
        bases (Gemma 3: 10k on sliding layers, 1M on global ones) come out right.
        """
        if self.card.position_encoding != "rope":
            return None
        layer_type = self.card.layer_types[layer]
        # The bridge wraps HF's rotary module, so match buffers by name wherever they sit.
        buffers = {
            name.rsplit(".", 1)[-1]: buf
            for name, buf in self.hf_model.named_buffers()
            if "rotary_emb" in name
            and name.endswith("inv_freq")
            and "original_inv_freq" not in name.rsplit(".", 1)[-1]
        }
        freq = buffers.get(f"{layer_type}_inv_freq", buffers.get("inv_freq"))
        return None if freq is None else freq.detach().float().cpu()

    def attention_scaling(self, layer: int) -> float:
        """The factor the layer multiplies q.k by before the softmax (1/sqrt(d_head) unless the
        model says otherwise, e.g. Gemma 3's query_pre_attn_scalar)."""
        for name, module in self.hf_model.named_modules():
            if name.endswith((f"layers.{layer}.self_attn", f"layers.{layer}.attention", f"h.{layer}.attn")):
                scale = getattr(module, "scaling", None)
                if scale is not None:
                    return float(scale)
        return self.d_head**-0.5

    # ------------------------------------------------------------------ inputs
    @property
    def special_ids(self) -> set[int]:
        return set(self.tokenizer.all_special_ids)

    def tokenize(self, texts: Sequence[str], prepend_bos: bool | None = None) -> list[list[int]]:
        """Token ids per text. ``prepend_bos=None`` keeps the tokenizer's own convention."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise EmptyDataError("no texts to tokenize: pass at least one non-empty text")
        out = []
        bos = self.tokenizer.bos_token_id
        for text in texts:
            ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
            has_bos = bool(ids) and bos is not None and ids[0] == bos and self.card.adds_bos
            if prepend_bos is True and not has_bos:
                if bos is None:
                    raise PosbenchError(f"{self.model_id} has no BOS token to prepend")
                ids = [bos] + ids
            elif prepend_bos is False and has_bos:
                ids = ids[1:]
            out.append(ids)
        return out

    def check_lengths(self, sequences: Sequence[Sequence[int]], what: str = "sequence") -> None:
        if len(sequences) == 0:
            raise EmptyDataError(f"no {what}s to run: the data is empty")
        limit = self.card.context_length
        for i, seq in enumerate(sequences):
            if len(seq) == 0:
                raise EmptyDataError(f"{what} {i} is empty: every input needs at least one token")
            if limit is not None and len(seq) > limit:
                raise ContextTooLongError(
                    f"{what} {i} has {len(seq)} tokens but {self.model_id}'s context is {limit}: "
                    "shorten the text or lower --seq-len"
                )

    def batch(self, sequences: Sequence[Sequence[int]], padding_side: str = "right") -> Batch:
        """Pad token lists into a Batch; position ids come from the mask."""
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        self.check_lengths(sequences)
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        offsets = torch.zeros(len(sequences), dtype=torch.long)
        for row, seq in enumerate(sequences):
            start = width - len(seq) if padding_side == "left" else 0
            ids[row, start : start + len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, start : start + len(seq)] = 1
            offsets[row] = start
        lengths = mask.sum(-1)
        device = self.device
        return Batch(
            ids.to(device),
            mask.to(device),
            position_ids_from_mask(mask).to(device),
            offsets,
            lengths,
            padding_side,
        )

    def chat(self, messages: str | list[dict[str, str]], system: str | None = None) -> str:
        """Render a chat for an instruct model with its own template, ready for generation."""
        if not self.card.chat_template:
            raise PosbenchError(
                f"{self.model_id} has no chat template: pass plain text, or use an instruct model "
                "such as smollm2-135m-instruct"
            )
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if system is not None:
            messages = [{"role": "system", "content": system}] + list(messages)
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def random_tokens(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform random ordinary tokens (special tokens excluded), shape [n, length]."""
        allowed = torch.ones(self.card.vocab_size, dtype=torch.bool)
        special = [i for i in self.special_ids if i < self.card.vocab_size]
        allowed[special] = False
        vocab_ids = allowed.nonzero().squeeze(-1)
        picks = torch.randint(0, len(vocab_ids), (n, length), generator=generator)
        return vocab_ids[picks]

    # ------------------------------------------------------------------ running
    @torch.no_grad()
    def forward(
        self, batch: Batch, hooks: Iterable[Hook] = (), logits: bool = True
    ) -> torch.Tensor | None:
        """Run the batch with the active interventions' hooks, then ``hooks``, attached.

        With ``logits=False`` the pass stops right before the unembedding (Gemma-3's 262k-token
        unembedding dominates short runs otherwise); ``unembed.hook_in`` (the final normalised
        residual) still fires, so a probe can unembed in chunks itself.
        """
        fwd_hooks: list[Hook] = []
        for intervention in self._interventions:
            fwd_hooks.extend(intervention.hooks(self))
        fwd_hooks.extend(hooks)
        if not logits:

            def stop(tensor, hook):
                raise _StopForward

            fwd_hooks.append(("unembed.hook_in", stop))
        try:
            return self.bridge.run_with_hooks(
                batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                fwd_hooks=fwd_hooks,
            )
        except _StopForward:
            return None
        finally:
            self.bridge.reset_hooks(including_permanent=False)

    def logits(self, texts: Sequence[str] | str, padding_side: str = "right") -> list[torch.Tensor]:
        """Per-text logits [len, vocab] (padding removed), under the active interventions."""
        seqs = self.tokenize(texts)
        batch = self.batch(seqs, padding_side)
        out = self.forward(batch)
        return [out[b, batch.real_columns(b)] for b in range(batch.size)]

    # ------------------------------------------------------------------ interventions
    @contextlib.contextmanager
    def intervene(self, *interventions: "Intervention") -> Iterator["HookedModel"]:
        """Apply interventions (validated first) to every forward pass inside the block."""
        for intervention in interventions:
            intervention.validate(self)
        self._interventions.extend(interventions)
        try:
            yield self
        finally:
            for _ in interventions:
                self._interventions.pop()

    @property
    def active_interventions(self) -> list[dict[str, Any]]:
        return [iv.describe() for iv in self._interventions]

    def __repr__(self) -> str:
        c = self.card
        return (
            f"HookedModel({self.model_id!r}, {c.architecture}, layers={c.n_layers}, "
            f"heads={c.n_heads}/{c.n_kv_heads}kv, pos={c.position_encoding})"
        )


# ---------------------------------------------------------------------------- loading
def _boot(hf_model, tokenizer, model_id: str, source: str) -> HookedModel:
    from transformer_lens.model_bridge import TransformerBridge

    if any("_original_component" in n for n, _ in hf_model.named_modules()):
        raise PosbenchError(
            "this HuggingFace model is already wrapped by a TransformerBridge (a HookedModel "
            "uses it): reuse that HookedModel, or load a fresh copy of the model"
        )
    hf_model.eval()
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    # The bridge re-loads its tokenizer with add_bos_token=True from `name_or_path` (a hub
    # call for hub names, and a changed BOS convention). posbench tokenizes with the user's own
    # tokenizer; the bridge gets a copy marked as already adding BOS so it keeps it as is.
    bridge_tokenizer = copy.deepcopy(tokenizer)
    bridge_tokenizer.init_kwargs.setdefault("name_or_path", model_id)
    bridge_tokenizer.init_kwargs["add_bos_token"] = True
    bridge = TransformerBridge.boot_transformers(
        model_id, hf_model=hf_model, tokenizer=bridge_tokenizer, device=str(hf_model.device)
    )
    return HookedModel(bridge, hf_model, tokenizer, model_id, source)


def _from_pretrained(name: str, dtype, device, source: str, model_id: str | None = None) -> HookedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="eager")
    return _boot(model.to(device), tokenizer, model_id or name, source)


def load_model(
    spec: Any,
    tokenizer: Any = None,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
) -> HookedModel:
    """Load a hooked model.

    ``spec`` is a zoo alias (``posbench models`` lists them), a local checkpoint folder, a
    HuggingFace hub name (needs the network), or an already-loaded HuggingFace model, in which
    case pass its ``tokenizer`` too.
    """
    device = device or "cpu"
    if not isinstance(spec, (str, os.PathLike)):
        if tokenizer is None:
            raise UnknownModelError("a loaded HuggingFace model needs its tokenizer: load_model(model, tokenizer)")
        name = getattr(spec.config, "name_or_path", None) or type(spec).__name__
        return _boot(spec, tokenizer, str(name), "in-memory HuggingFace model")

    name = str(spec)
    if name in ZOO:
        entry = ZOO[name]
        if entry.kind == "tiny":
            model, tok = build_tiny(name)
            return _boot(model.to(device=device, dtype=dtype), tok, name, entry.source)
        folder = embedded_checkpoint(name, progress=progress)
        return _from_pretrained(str(folder), dtype, device, entry.source, model_id=name)

    if Path(name).expanduser().is_dir():
        return _from_pretrained(str(Path(name).expanduser()), dtype, device, f"local folder {name}")

    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        close = difflib.get_close_matches(name, list(ZOO), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownModelError(
            f"unknown model '{name}': not a zoo alias ({', '.join(ZOO)}), not a local folder, "
            f"and not a HuggingFace hub name like 'org/name'.{hint}"
        )
    try:
        return _from_pretrained(name, dtype, device, f"HuggingFace hub {name}")
    except OSError as err:
        raise UnknownModelError(
            f"could not load '{name}' from the HuggingFace hub ({type(err).__name__}): check the "
            "name and your network, or use a zoo alias / local folder (`posbench models`)"
        ) from err

