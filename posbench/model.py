"""The hooked model every probe and intervention shares: a thin facade.

``load_model(spec)`` loads a HuggingFace causal LM and puts a backend over it (TransformerLens 4.x
``TransformerBridge``: eager attention, unprocessed weights). ``HookedModel`` holds the model card,
the tokenizer and input building (batches whose position ids come from the attention mask,
segmented prompts), the backend, and a stack of active interventions that every forward pass
applies and every result records. It knows no hook names: probes declare captures (``sites``),
interventions declare edits, the backend runs them.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from .backends import Backend, RunOutput
from .batch import Batch, SegmentSpans, position_ids_from_mask
from .card import ModelCard, build_card
from .errors import ContextTooLongError, EmptyDataError, PosbenchError, UnknownModelError
from .sites import AttentionCapture, Capture
from .token_order import in_user_order
from .zoo import ZOO, build_tiny, embedded_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from .data.segments import SegmentedPrompt
    from .protocols import Intervention

log = logging.getLogger("posbench")

__all__ = ["Batch", "HookedModel", "SegmentSpans", "load_model", "position_ids_from_mask"]


class HookedModel:
    """One hooked model shared by all probes and interventions (see docs/architecture.md)."""

    def __init__(self, backend: Backend, hf_model, tokenizer, model_id: str, source: str, card: ModelCard):
        self.backend = backend
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.source = source
        self.card = card
        self._interventions: list["Intervention"] = []
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
    def n_pairs(self) -> int:
        """Rotary pairs per head (rotary dims / 2), 0 without RoPE."""
        return self.backend.facts.n_pairs

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def rotary_inv_freq(self, layer: int) -> torch.Tensor | None:
        """The layer's own RoPE ``inv_freq`` (rad/token per rotary pair), or None without RoPE."""
        return self.backend.rotary_inv_freq(layer)

    def rotary_attention_factor(self, layer: int) -> float:
        """The factor the layer's rotary cos/sin carry (1 for plain RoPE; YaRN's attention factor)."""
        return self.backend.rotary_attention_factor(layer)

    def attention_scaling(self, layer: int) -> float:
        return self.backend.attention_scaling(layer)

    def supports(self, site: str, edit: bool = False) -> bool:
        """Whether the backend can read (or edit) ``site`` on this model."""
        return self.backend.supports(site, edit)

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

    def batch(
        self,
        sequences: Sequence[Sequence[int]],
        padding_side: str = "right",
        row_meta: Sequence[dict[str, Any]] | None = None,
    ) -> Batch:
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
            ids.to(device), mask.to(device), position_ids_from_mask(mask).to(device), offsets, lengths, padding_side,
            row_meta=[dict(m) for m in row_meta] if row_meta is not None else [{} for _ in sequences],
        )

    def tokenize_segments(self, prompt: "SegmentedPrompt") -> tuple[list[int], SegmentSpans]:
        """Token ids of a segmented prompt, each part tokenized on its own (only the prefix gets
        the tokenizer's special tokens, as in PINE), and where each part sits."""
        ids = self.tokenize([prompt.prefix])[0] if prompt.prefix or self.card.adds_bos else []
        prefix = (0, len(ids))
        spans = []
        for segment in prompt.segments:
            part = self.tokenizer(segment, add_special_tokens=False)["input_ids"]
            if not part:
                raise EmptyDataError(f"a segment tokenizes to nothing: {segment!r}")
            spans.append((len(ids), len(ids) + len(part)))
            ids.extend(part)
        suffix_ids = self.tokenizer(prompt.suffix, add_special_tokens=False)["input_ids"] if prompt.suffix else []
        suffix = (len(ids), len(ids) + len(suffix_ids))
        ids.extend(suffix_ids)
        return ids, SegmentSpans(prefix, tuple(spans), suffix)

    def segment_batch(
        self, prompts: Sequence["SegmentedPrompt"], padding_side: str = "right", continuations: Sequence[Sequence[int]] | None = None
    ) -> Batch:
        """A Batch of segmented prompts (plus optional continuation token ids after each), with
        the segment spans of every row in ``batch.segments``."""
        rows, spans = [], []
        for i, prompt in enumerate(prompts):
            ids, span = self.tokenize_segments(prompt)
            if continuations is not None:
                ids = ids + list(continuations[i])
            rows.append(ids)
            spans.append(span)
        batch = self.batch(rows, padding_side)
        batch.segments = spans
        return batch

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
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def random_tokens(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform random ordinary tokens (special tokens excluded), shape [n, length]."""
        allowed = torch.ones(self.card.vocab_size, dtype=torch.bool)
        special = [i for i in self.special_ids if i < self.card.vocab_size]
        allowed[special] = False
        vocab_ids = allowed.nonzero().squeeze(-1)
        picks = torch.randint(0, len(vocab_ids), (n, length), generator=generator)
        return vocab_ids[picks]

    # ------------------------------------------------------------------ running
    def run(
        self, batch: Batch, captures: Sequence[Capture | AttentionCapture] = (), logits: bool = False
    ) -> RunOutput:
        """One forward pass under the active interventions, returning what ``captures`` reduced
        to (and the logits when asked). Input edits rewrite the batch first; activation edits
        and attention overrides go to the backend with the captures. If an input edit reordered
        the tokens (``Batch.token_order``), every capture, edit, other override and the logits see
        the user's order (``posbench.token_order``)."""
        edits, overrides = [], []
        for intervention in self._interventions:
            batch = intervention.edit_batch(batch, self)
            edits.extend(intervention.edits(self))
            overrides.extend(intervention.attention_overrides(self))
        order = batch.token_order
        if order is None:
            return self.backend.run(batch, captures, edits=edits, overrides=overrides, logits=logits)
        # the tokens run in another order (PINE's canonical segment order): everything else sees the user's
        captures, edits, overrides = in_user_order(order, order.user_batch(batch), captures, edits, overrides)
        out = self.backend.run(batch, captures, edits=edits, overrides=overrides, logits=logits)
        if out.logits is not None:
            out.logits = order.to_user(out.logits)
        return out

    def attention_rows_held(self, tokens: int) -> int:
        """Query rows of one layer's attention matrix a pass over ``tokens``-token sequences
        holds at once under the active interventions: ``tokens`` on eager layers, one chunk when
        all run fast (what ``posbench.limits`` plans memory with)."""
        overrides = [o for intervention in self._interventions for o in intervention.attention_overrides(self)]
        return self.backend.attention_rows_held(tokens, overrides)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits [B, T, vocab] for a batch, under the active interventions."""
        return self.run(batch, logits=True).logits

    def logits(self, texts: Sequence[str] | str, padding_side: str = "right") -> list[torch.Tensor]:
        """Per-text logits [len, vocab] (padding removed), under the active interventions."""
        seqs = self.tokenize(texts)
        batch = self.batch(seqs, padding_side)
        out = self.forward(batch)
        return [out[b, batch.real_columns(b)] for b in range(batch.size)]

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int = 32,
        stop_ids: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
        segments: Sequence[SegmentSpans] | None = None,
    ) -> list[list[int]]:
        """Greedy continuations of token-id prompts under the active interventions.

        Every step re-runs the full sequence (no KV cache), so edits that depend on the whole
        sequence (PINE, position edits) hold at every step; ``progress(n)`` is called per token.
        ``segments`` (one ``SegmentSpans`` per prompt, from ``tokenize_segments``) gives every
        step's batch the prompts' segment layout; generated tokens extend the suffix.
        """
        stop = set(stop_ids if stop_ids is not None else [self.tokenizer.eos_token_id])
        rows = [list(p) for p in prompts]
        new: list[list[int]] = [[] for _ in rows]
        live = list(range(len(rows)))
        for _ in range(max_new_tokens):
            if not live:
                break
            batch = self.batch([rows[i] + new[i] for i in live], "left")
            if segments is not None:
                batch.segments = [segments[i] for i in live]
            hidden = self.run(batch, [Capture("last", "final_norm", _last_hidden)]).captured["last"]
            choice = self.backend.unembed(hidden).argmax(-1).tolist()
            still = []
            for i, token in zip(live, choice):
                new[i].append(int(token))
                if token not in stop:
                    still.append(i)
            live = still
            if progress:
                progress(1)
        return new

    @contextlib.contextmanager
    def using_attention(self, attn_implementation: str) -> Iterator["HookedModel"]:
        """Run the block with another attention implementation (``"sdpa"`` or ``"eager"``), e.g.
        to check a result on the eager reference path with the same weights; results made inside
        record it."""
        from .backends.transformer_lens import check_attn_implementation

        check_attn_implementation(attn_implementation)
        before = self.backend.attn_implementation
        self.backend.attn_implementation = self.card.attn_implementation = attn_implementation
        try:
            yield self
        finally:
            self.backend.attn_implementation = self.card.attn_implementation = before

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
    def interventions(self) -> tuple["Intervention", ...]:
        """The active interventions, in stack order."""
        return tuple(self._interventions)

    @property
    def active_interventions(self) -> list[dict[str, Any]]:
        return [iv.describe() for iv in self._interventions]

    def __repr__(self) -> str:
        c = self.card
        return (
            f"HookedModel({self.model_id!r}, {c.architecture}, layers={c.n_layers}, "
            f"heads={c.n_heads}/{c.n_kv_heads}kv, pos={c.position_encoding})"
        )


def _last_hidden(hidden: torch.Tensor, ctx) -> torch.Tensor:
    """The final hidden state of every row's last real token (left padding: the last column)."""
    return hidden[:, -1].float()


# ---------------------------------------------------------------------------- loading
def _boot(hf_model, tokenizer, model_id: str, source: str, attn_implementation: str) -> HookedModel:
    from .backends.transformer_lens import TransformerLensBackend

    hf_model.eval()
    card = build_card(model_id, source, hf_model, tokenizer)
    backend = TransformerLensBackend.wrap(hf_model, tokenizer, model_id, card, attn_implementation)
    card.attn_implementation = backend.attn_implementation
    return HookedModel(backend, hf_model, tokenizer, model_id, source, card)


def _read_pretrained(name: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="eager")
    return model, tokenizer


def _from_pretrained(name: str, dtype, device, source: str, attn_implementation: str, model_id: str | None = None) -> HookedModel:
    model, tokenizer = _read_pretrained(name, dtype)
    return _boot(model.to(device), tokenizer, model_id or name, source, attn_implementation)


def _from_folder(folder: Path, name: str, dtype, device, attn_implementation: str) -> HookedModel:
    """A local checkpoint folder, or a clear error when it is not one."""
    fix = ("pass a folder written by save_pretrained (config.json, the weights and the tokenizer files) "
           "or a zoo alias (`posbench models`)")
    if not (folder / "config.json").is_file():
        raise UnknownModelError(f"folder {name} is not a HuggingFace checkpoint (it has no config.json): {fix}")
    try:
        model, tokenizer = _read_pretrained(str(folder), dtype)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # what transformers raises
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise UnknownModelError(
            f"cannot load the checkpoint in folder {name} ({type(err).__name__}: {first}): {fix}"
        ) from err
    return _boot(model.to(device), tokenizer, name, f"local folder {name}", attn_implementation)


def load_model(
    spec: Any,
    tokenizer: Any = None,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
    attn_implementation: str = "sdpa",
) -> HookedModel:
    """Load a hooked model.

    ``spec`` is a zoo alias (``posbench models`` lists them), a local checkpoint folder, a
    HuggingFace hub name (needs the network), or an already-loaded HuggingFace model, in which
    case pass its ``tokenizer`` too. ``attn_implementation``: ``"sdpa"`` runs each layer's
    attention with SDPA and computes attention statistics from q and k chunk by chunk (layers
    whose scores or pattern a pass reads or edits run eager); ``"eager"`` runs the bridge's eager
    attention everywhere (the reference path; see docs/speed.md).
    """
    from .backends.transformer_lens import check_attn_implementation

    check_attn_implementation(attn_implementation)  # before anything loads
    device = device or "cpu"
    if not isinstance(spec, (str, os.PathLike)):
        if tokenizer is None:
            raise UnknownModelError("a loaded HuggingFace model needs its tokenizer: load_model(model, tokenizer)")
        name = getattr(spec.config, "name_or_path", None) or type(spec).__name__
        return _boot(spec, tokenizer, str(name), "in-memory HuggingFace model", attn_implementation)

    name = str(spec)
    if name in ZOO:
        entry = ZOO[name]
        if entry.kind == "tiny":
            model, tok = build_tiny(name)
            return _boot(model.to(device=device, dtype=dtype), tok, name, entry.source, attn_implementation)
        folder = embedded_checkpoint(name, progress=progress)
        return _from_pretrained(str(folder), dtype, device, entry.source, attn_implementation, model_id=name)

    local = Path(name).expanduser()
    if local.is_dir():
        return _from_folder(local, name, dtype, device, attn_implementation)
    if local.exists():
        raise UnknownModelError(
            f"model path {name} is a file, not a checkpoint folder: pass the folder that holds config.json, "
            "the weights and the tokenizer (or a zoo alias, `posbench models`)"
        )

    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        close = difflib.get_close_matches(name, list(ZOO), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownModelError(
            f"unknown model '{name}': not a zoo alias ({', '.join(ZOO)}), not a local folder, "
            f"and not a HuggingFace hub name like 'org/name'.{hint}"
        )
    try:
        return _from_pretrained(name, dtype, device, f"HuggingFace hub {name}", attn_implementation)
    except OSError as err:
        raise UnknownModelError(
            f"could not load '{name}' from the HuggingFace hub ({type(err).__name__}): check the "
            "name and your network, or use a zoo alias / local folder (`posbench models`)"
        ) from err



def load_card(spec: str, progress: Callable[[str], None] | None = None, attn_implementation: str = "sdpa") -> ModelCard:
    """A model's card without loading its weights: the architecture is built on the meta device
    from the config (no memory, no compute), the tokenizer is read as usual. Embedded models are
    dequantized once first if they are not cached yet. ``attn_implementation`` as for
    ``load_model``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .backends.transformer_lens import check_attn_implementation

    check_attn_implementation(attn_implementation)

    name = str(spec)
    if name in ZOO and ZOO[name].kind == "tiny":
        model, tokenizer = build_tiny(name)
        source = ZOO[name].source
    else:
        if name in ZOO:
            folder, source = str(embedded_checkpoint(name, progress=progress)), ZOO[name].source
        elif Path(name).expanduser().is_dir():
            folder, source = str(Path(name).expanduser()), f"local folder {name}"
        else:
            folder, source = name, f"HuggingFace hub {name}"
        try:
            config = AutoConfig.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except OSError as err:
            raise UnknownModelError(
                f"could not read the config of '{name}' ({type(err).__name__}): use a zoo alias, a checkpoint "
                "folder, or a hub name with the network on (`posbench models`)"
            ) from err
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    card = build_card(name, source, model, tokenizer)
    card.attn_implementation = attn_implementation
    return card
