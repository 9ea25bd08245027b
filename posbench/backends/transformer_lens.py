"""The TransformerLens 4.x backend: a ``TransformerBridge`` over the HuggingFace model.

Unprocessed weights (no layer-norm folding or centring, which would change residual norms and
massive activations). Two attention implementations, chosen when the model is loaded:

* ``"eager"``: the bridge's own attention, which re-implements attention so ``hook_attn_scores``
  is pre-softmax and ``hook_pattern`` post-softmax (edits to either flow into the output);
  attention statistics are folded over row slices of that [B, H, T, T] pattern.
* ``"sdpa"`` (the default): each layer's attention runs the HF module itself with posbench's
  attention function (``hf_attention``): transformers' SDPA for the output, and attention
  statistics folded over rows rebuilt chunk by chunk from the post-RoPE q and k
  (``attention_rows``), never a T x T matrix. A layer falls back to the bridge's eager attention
  for a pass that reads or edits ``scores``/``pattern``, has an attention override, or touches a
  site the HF module does not expose on that architecture (see ``_runs_fast``).

This module is the only place that knows TransformerLens hook names.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import PosbenchError
from ..sites import (
    LAYERLESS_SITES,
    SITES,
    AttentionCapture,
    AttentionOverride,
    Capture,
    Context,
    Edit,
    ModelFacts,
)
from . import Backend, RunOutput
from .attention_rows import (ROW_CHUNK, attention_from_rows, attention_with_key_sums, attention_with_lse,
                             entries_from_lse, fold_statistics, lse_possible, pattern_rows, slices, with_key_mask)
from .hf_attention import attention_implementation, sdpa

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def check_attn_implementation(name: str) -> str:
    if name not in ATTN_IMPLEMENTATIONS:
        raise PosbenchError(f"unknown attn_implementation '{name}': use {' or '.join(map(repr, ATTN_IMPLEMENTATIONS))}")
    return name

_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_in",
    "resid_post": "blocks.{layer}.hook_out",
    "q": "blocks.{layer}.attn.q.hook_out",
    "k": "blocks.{layer}.attn.k.hook_out",
    "v": "blocks.{layer}.attn.v.hook_out",
    "rope_cos": "blocks.{layer}.attn.hook_cos",
    "rope_sin": "blocks.{layer}.attn.hook_sin",
    "rot_q": "blocks.{layer}.attn.hook_rot_q",
    "rot_k": "blocks.{layer}.attn.hook_rot_k",
    "scores": "blocks.{layer}.attn.hook_attn_scores",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "z": "blocks.{layer}.attn.o.hook_in",
    "attn_out": "blocks.{layer}.attn.hook_out",
    "mlp_out": "blocks.{layer}.mlp.hook_out",
    "final_norm": "unembed.hook_in",
}
# q/k-norm models (Gemma 3, Qwen 3, OLMo 2): the normalised q/k are what RoPE rotates, and the
# bridge shows them [B, H, T, d] on these hooks.
_NORMED = {"q": "blocks.{layer}.attn.hook_q_normed", "k": "blocks.{layer}.attn.hook_k_normed"}
# The HF module (fast path) calls the q/k-norm bridges directly: their outputs, [B, H, T, d] too.
_FAST_NORMED = {"q": "blocks.{layer}.attn.q_norm.hook_out", "k": "blocks.{layer}.attn.k_norm.hook_out"}
_ROTATED = ("rot_q", "rot_k")  # the fast path fires these itself, from the q/k the attention function gets
_EAGER_ONLY = ("scores", "pattern")
assert set(_HOOKS) == set(SITES)


class _StopForward(Exception):
    """Raised by a hook to skip the final norm's consumer (the unembedding) when no logits are needed."""


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _bridge_tokenizer(tokenizer):
    """The bridge's own copy of the user's tokenizer: the bridge sets its padding side, special
    tokens and init kwargs, which must not leak into the user's. A shallow copy with its own
    attribute dicts and lists shares the Rust tokenizer (Gemma-3's 262k vocabulary: ~300 MiB a
    copy), which the bridge leaves alone unless it must add a special token the vocabulary
    lacks; then (and for slow tokenizers) it gets a deep copy."""
    def has_id(name):
        return getattr(tokenizer, f"{name}_token", None) is not None and getattr(tokenizer, f"{name}_token_id", None) is not None

    adds_tokens = not (has_id("eos") and has_id("bos") and (tokenizer.pad_token is None or has_id("pad")))
    if adds_tokens or not hasattr(tokenizer, "_tokenizer"):
        return copy.deepcopy(tokenizer)
    shallow = copy.copy(tokenizer)
    for name, value in vars(tokenizer).items():
        if name == "init_kwargs":
            # what the tokenizer was loaded with, kept for save_pretrained (which the bridge never
            # calls) and deep-copied again by the bridge on boot: without its added-token table
            # (Gemma-3: 6,384 AddedTokens, ~0.3 s to copy twice); the tokens stay in the tokenizer
            value = {k: v for k, v in value.items() if k != "added_tokens_decoder"}
        if isinstance(value, (dict, list, set)) and name not in _VOCABULARY_TABLES:
            shallow.__dict__[name] = copy.deepcopy(value)
    return shallow


# the Python vocabulary and merges a fast tokenizer was built from (transformers 5 keeps them on
# the object; Gemma-3: 262k entries and 515k merges, ~1 s to deep-copy); the bridge never edits them
_VOCABULARY_TABLES = frozenset({"_vocab", "_merges"})


def _fast_forward(component, attend: Callable) -> Callable:
    """A forward for a bridge attention component that runs its HF module with ``attend`` as the
    attention function, firing the component's own hook_in, rope cos/sin and hook_out around it."""
    hf_attention = component.original_component
    hook_cos, hook_sin = component._modules.get("hook_cos"), component._modules.get("hook_sin")

    def forward(*args, **kwargs):
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = component.hook_in(kwargs["hidden_states"])
        else:
            args = (component.hook_in(args[0]), *args[1:])
        embeddings = kwargs.get("position_embeddings")
        if embeddings is not None and hook_cos is not None:
            kwargs["position_embeddings"] = (hook_cos(embeddings[0]), hook_sin(embeddings[1]))
        output = hf_attention(*args, posbench_layer=attend, **kwargs)
        return component.hook_out(output[0]), None

    return forward


class TransformerLensBackend(Backend):
    name = "transformer-lens"

    def __init__(self, bridge, hf_model, card, attn_implementation: str = "sdpa"):
        self.bridge = bridge
        self.hf_model = hf_model
        self.card = card
        self.attn_implementation = check_attn_implementation(attn_implementation)
        self._firing: dict[bool, frozenset[str]] = {}
        self._facts: ModelFacts | None = None
        self._inv_freq_owners: dict[str, torch.nn.Module] | None = None
        self.row_chunk = ROW_CHUNK

    @classmethod
    def wrap(cls, hf_model, tokenizer, model_id: str, card, attn_implementation: str = "sdpa") -> "TransformerLensBackend":
        """Put a TransformerBridge over a loaded HF model (wrapped in place: one bridge per model)."""
        import logging

        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.tools.model_registry.registry_io import resolve_model_alias

        if any("_original_component" in n for n, _ in hf_model.named_modules()):
            raise PosbenchError(
                "this HuggingFace model is already wrapped by a TransformerBridge (a HookedModel "
                "uses it): reuse that HookedModel, or load a fresh copy of the model"
            )
        logging.getLogger("transformer_lens").setLevel(logging.ERROR)
        # The bridge re-loads its tokenizer with add_bos_token=True from `name_or_path` (a hub
        # call for hub names, and a changed BOS convention). posbench tokenizes with the user's own
        # tokenizer; the bridge gets a copy marked as already adding BOS so it keeps it as is.
        bridge_tokenizer = _bridge_tokenizer(tokenizer)
        bridge_tokenizer.init_kwargs.setdefault("name_or_path", model_id)
        bridge_tokenizer.init_kwargs["add_bos_token"] = True
        # A zoo alias that TransformerLens also knows (gemma-3-270m) would make it announce a
        # hub download it never does: give the bridge a name outside its alias table.
        bridge_name = f"posbench/{model_id}" if resolve_model_alias(model_id) is not None else model_id
        bridge = TransformerBridge.boot_transformers(
            bridge_name, hf_model=hf_model, tokenizer=bridge_tokenizer, device=str(hf_model.device)
        )
        return cls(bridge, hf_model, card, attn_implementation)

    # ------------------------------------------------------------------ facts and sites
    @property
    def facts(self) -> ModelFacts:
        if self._facts is None:
            c = self.card
            self._facts = ModelFacts(
                n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, d_head=c.head_dim,
                n_pairs=(c.rotary_dims or c.head_dim) // 2 if c.position_encoding == "rope" else 0,
                scaling=tuple(self.attention_scaling(layer) for layer in range(c.n_layers)),
                sliding_windows=tuple(c.sliding_windows) if c.sliding_windows else (None,) * c.n_layers,
            )
        return self._facts

    def _hook(self, site: str, layer: int | None, fast: bool = False) -> tuple[str, Callable, Callable]:
        """(hook name, to canonical shape, back to the hook's shape) for a site, on the eager
        bridge attention or (``fast``) on the HF attention module."""
        if site in _NORMED and _NORMED[site].format(layer=layer) in self.bridge.hook_dict:
            return (_FAST_NORMED if fast else _NORMED)[site].format(layer=layer), _heads_first, _heads_first
        return _HOOKS[site].format(layer=layer), _identity, _identity

    def _fires_in_forward(self, name: str, fast: bool = False) -> bool:
        """Whether a hook point is actually called with the bridge's eager attention (or, with
        ``fast``, the HF attention modules): some bridge components list hook points they never
        call (hook_rot_q on GPT-NeoX), and the HF modules skip the bridge's own re-implementation."""
        if fast not in self._firing:
            fired: set[str] = set()

            def note(name):
                def hook(x, hook):
                    fired.add(name)
                    if name == _HOOKS["final_norm"]:  # nothing fires after it: skip the unembedding
                        raise _StopForward         # (a vocab x d matmul that pages in the whole matrix)
                    return x

                return hook

            ids = torch.zeros(1, 2, dtype=torch.long, device=self._device)
            layers = {layer: self._fast_layer(layer) for layer in range(self.card.n_layers)} if fast else {}
            names = {pattern.format(layer=layer) for table in (_HOOKS, _NORMED, _FAST_NORMED)
                     for pattern in table.values() for layer in range(self.card.n_layers)}
            try:
                with self._fast_attention(layers):
                    self.bridge.run_with_hooks(
                        ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(2, device=self._device)[None],
                        fwd_hooks=[(name, note(name)) for name in sorted(names & set(self.bridge.hook_dict))],
                    )
            except _StopForward:
                pass
            finally:
                self.bridge.reset_hooks(including_permanent=False)
            self._firing[fast] = frozenset(fired)
        return name in self._firing[fast]

    def _rebuilds_rotation(self, layer: int) -> bool:
        """GPT-NeoX-style components fire no post-RoPE hooks in their eager attention: rotated
        q/k are rebuilt from q, k and the layer's cos/sin (readable, not editable)."""
        return (
            self.card.position_encoding == "rope"
            and not self._fires_in_forward(self._hook("rot_q", layer)[0])
            and self._fires_in_forward(self._hook("rope_cos", layer)[0])
        )

    def _works_eager(self, site: str, layer: int | None, edit: bool) -> bool:
        if site in _ROTATED and not edit and layer is not None and self._rebuilds_rotation(layer):
            return not self.card.attn_has_qk_norm
        return self._fires_in_forward(self._hook(site, layer)[0])

    def _works_fast(self, site: str, layer: int | None, edit: bool) -> bool:
        """Whether ``site`` can be read (edited) while the layer's attention runs fast."""
        if site in _EAGER_ONLY:
            return False
        if site in _ROTATED:  # fired by the fast attention itself, on the q/k the HF module rotated
            return _HOOKS[site].format(layer=layer) in self.bridge.hook_dict
        return self._fires_in_forward(self._hook(site, layer, fast=True)[0], fast=True)

    def supports(self, site: str, edit: bool = False) -> bool:
        """What the eager reference path can read (edit): the same whatever the attention
        implementation, so a result never depends on it (the fast path falls back per layer)."""
        return self._works_eager(site, None if site in LAYERLESS_SITES else 0, edit)

    def _require(self, site: str, edit: bool, layer: int | None) -> None:
        if not self._works_eager(site, layer, edit):
            what = "edited" if edit else "read"
            hint = ""
            if site in _ROTATED:
                hint = (": the bridge exposes no post-RoPE q/k for this architecture; edit "
                        "rope_cos/rope_sin instead (rope-position-free)")
            raise PosbenchError(f"site '{site}' cannot be {what} on {self.card.model_id} ({self.card.architecture}){hint}")

    @property
    def _device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    # ------------------------------------------------------------------ which attention per layer
    def _fast_layers(self, captures, edits, overrides) -> frozenset[int]:
        """The layers whose attention runs fast in this pass: every layer in ``sdpa`` mode except
        those with an attention override, a read or edit of ``scores``/``pattern``, or another
        site the HF attention module does not expose there (GPT-2's z, GPT-NeoX's split q/k/v),
        and every layer of a model whose attention softcaps its logits (SDPA has no softcap)."""
        if self.attn_implementation != "sdpa" or getattr(self.hf_model.config, "attn_logit_softcapping", None):
            return frozenset()
        every = range(self.facts.n_layers)
        fast = set(every)
        for override in overrides:
            fast -= set(override.layers or every)
        for item in (*edits, *captures):
            if isinstance(item, AttentionCapture):
                uses = [(site, False) for site in item.statistic.needs]
            else:
                uses = [(item.site, isinstance(item, Edit))]
            for site, edit in uses:
                if site in LAYERLESS_SITES:
                    continue
                fast -= {layer for layer in (item.layers or every) if not self._works_fast(site, layer, edit)}
        return frozenset(fast)

    def attention_rows_held(self, tokens: int, overrides=()) -> int:
        """Query rows of one layer's attention a pass over ``tokens``-token sequences holds at
        once: one chunk when every layer runs fast, all ``tokens`` when some layer runs eager
        (before captures are known: a pass that reads ``pattern`` makes its layers eager too)."""
        if len(self._fast_layers((), (), overrides)) < self.facts.n_layers:
            return tokens
        return min(self.row_chunk, tokens)

    # ------------------------------------------------------------------ one forward pass
    @torch.no_grad()
    def run(
        self,
        batch,
        captures: Sequence[Capture | AttentionCapture] = (),
        edits: Sequence[Edit] = (),
        overrides: Sequence[AttentionOverride] = (),
        logits: bool = False,
    ) -> RunOutput:
        facts = self.facts
        all_layers = tuple(range(facts.n_layers))
        fast = self._fast_layers(captures, edits, overrides)
        out = RunOutput()
        hooks: list[tuple[str, Callable]] = []

        def ctx(layer, tensors=None) -> Context:
            return Context(batch=batch, layer=layer, facts=facts, tensors=tensors or {}, unembed=self.unembed)

        def hook_of(site: str, layer: int | None, edit: bool) -> tuple[str, Callable, Callable]:
            self._require(site, edit, layer)
            return self._hook(site, layer, fast=layer in fast)

        # 1. edits (interventions), in order; a tensor edited here is what everything after sees
        for edit in edits:
            layers = (None,) if edit.site in LAYERLESS_SITES else (edit.layers or all_layers)
            for layer in layers:
                name, to_canon, from_canon = hook_of(edit.site, layer, edit=True)

                def apply(x, hook, fn=edit.fn, layer=layer, to_canon=to_canon, from_canon=from_canon):
                    return from_canon(fn(to_canon(x), ctx(layer)))

                hooks.append((name, apply))

        # 2. attention overrides (eager layers only): stash pre-RoPE q/k, replace the masked
        # pre-softmax scores; then an explicit key mask, on top of whatever computed the scores
        # (fast layers put the key mask into the mask their attention function gets)
        for override in overrides:
            for layer in override.layers or all_layers:
                hooks.extend(self._override_hooks(override, layer, ctx))
        if batch.key_mask is not None:
            hooks.extend(self._key_mask_hooks(batch, [layer for layer in all_layers if layer not in fast]))

        # 3. captures; attention statistics are gathered per layer and folded together
        attention: dict[int, list[AttentionCapture]] = {}
        for capture in captures:
            if isinstance(capture, AttentionCapture):
                for layer in capture.layers or all_layers:
                    attention.setdefault(layer, []).append(capture)
                continue
            if capture.site in LAYERLESS_SITES:
                name, to_canon, _ = hook_of(capture.site, None, edit=False)

                def keep_layerless(x, hook, c=capture, to_canon=to_canon):
                    out.captured[c.name] = c.reduce(to_canon(x.detach()), ctx(None))
                    return x

                hooks.append((name, keep_layerless))
                continue
            results = out.captured.setdefault(capture.name, {})
            for layer in capture.layers or all_layers:
                if capture.site in _ROTATED and layer not in fast and self._rebuilds_rotation(layer):
                    def keep_rebuilt(tensors, c=capture, layer=layer, results=results):
                        results[layer] = c.reduce(tensors[c.site], ctx(layer))

                    hooks.extend(self._rebuilt_rotation_hooks(layer, keep_rebuilt))
                    continue
                name, to_canon, _ = hook_of(capture.site, layer, edit=False)

                def keep(x, hook, c=capture, layer=layer, results=results, to_canon=to_canon):
                    results[layer] = c.reduce(to_canon(x.detach()), ctx(layer))
                    return x

                hooks.append((name, keep))
        fast_layers = {}
        for layer in all_layers:
            layer_captures = attention.get(layer, [])
            if layer in fast:
                stash: dict[str, torch.Tensor] = {}
                sites = {s for c in layer_captures for s in c.statistic.needs if s not in _ROTATED}
                hooks.extend(self._stash_hooks(layer, sorted(sites), stash, fast=True))
                fast_layers[layer] = self._fast_layer(layer, layer_captures, ctx, out, batch.key_mask, stash)
            elif layer_captures:
                hooks.extend(self._attention_hooks(layer_captures, layer, ctx, out))

        if not logits:
            def stop(x, hook):
                raise _StopForward

            hooks.append((_HOOKS["final_norm"], stop))
        try:
            with self._fast_attention(fast_layers):
                out.logits = self.bridge.run_with_hooks(
                    batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, fwd_hooks=hooks
                )
        except _StopForward:
            out.logits = None
        finally:
            self.bridge.reset_hooks(including_permanent=False)
        return out

    def _stash_hooks(self, layer: int, sites: Sequence[str], stash: dict[str, torch.Tensor], fast: bool = False) -> list:
        """Hooks that put the canonical tensors of ``sites`` at ``layer`` into ``stash``."""
        hooks = []
        rebuilt = [s for s in sites if s in _ROTATED and not fast and self._rebuilds_rotation(layer)]
        if rebuilt:
            hooks.extend(self._rebuilt_rotation_hooks(layer, stash.update))
        for site in sites:
            if site in rebuilt:
                continue
            self._require(site, False, layer)
            name, to_canon, _ = self._hook(site, layer, fast)

            def keep(x, hook, site=site, to_canon=to_canon):
                stash[site] = to_canon(x.detach())
                return x

            hooks.append((name, keep))
        return hooks

    def _attention_hooks(self, captures: Sequence[AttentionCapture], layer: int, ctx, out: RunOutput) -> list:
        """Eager attention: fold the layer's statistics over ``row_chunk``-row slices of its pattern."""
        stash: dict[str, torch.Tensor] = {}
        hooks = self._stash_hooks(layer, sorted({s for c in captures for s in c.statistic.needs}), stash)

        def fold(pattern, hook):
            tensors = {k: v.float() for k, v in stash.items()}
            contexts = [ctx(layer, {s: tensors[s] for s in c.statistic.needs}) for c in captures]
            weighted = {}
            for i, (capture, c) in enumerate(zip(captures, contexts)):
                weights = capture.statistic.key_weights(c)
                if weights is not None:
                    dtype = torch.promote_types(pattern.dtype, torch.float32)  # a float64 model keeps float64
                    weighted[i] = torch.matmul(pattern.detach().to(dtype), weights.to(pattern.device, dtype)[:, None])
            results = fold_statistics(captures, contexts, lambda heads: slices(pattern.detach(), heads, self.row_chunk), weighted)
            for capture, result in zip(captures, results):
                out.captured.setdefault(capture.name, {})[layer] = result
            stash.clear()
            return pattern

        hooks.append((self._hook("pattern", layer)[0], fold))
        return hooks

    # ------------------------------------------------------------------ the fast attention
    def _fast_layer(self, layer: int, captures: Sequence[AttentionCapture] = (), ctx=None, out: RunOutput | None = None,
                    key_mask: torch.Tensor | None = None, stash: dict[str, torch.Tensor] | None = None) -> Callable:
        """The attention function of ``layer`` on the fast path. It gets the post-RoPE q/k the HF
        module computed, fires the bridge's post-RoPE hooks on them (edits included), runs SDPA for
        the output and folds the layer's attention statistics over rows rebuilt from the same q/k."""
        rot_q = self.bridge.hook_dict.get(_HOOKS["rot_q"].format(layer=layer))
        rot_k = self.bridge.hook_dict.get(_HOOKS["rot_k"].format(layer=layer))
        component = self.bridge.blocks[layer].attn
        o = component._modules.get("o")
        # GPT-2's HF module projects with its own Conv1D, not the bridge's `o`: fire z here instead
        z_hook = o.hook_in if o is not None and all(m is not o for m in component.original_component.modules()) else None
        stash = {} if stash is None else stash

        def attend(module, query, key, value, mask, **kwargs):
            if rot_q is not None:
                query, key = rot_q(query), rot_k(key)
            if key_mask is not None:
                mask = with_key_mask(mask, key_mask.to(query.device))
            kwargs["scaling"] = scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
            tensors = {**{k: v.float() for k, v in stash.items()},
                       "rot_q": query.transpose(1, 2).float(), "rot_k": key.transpose(1, 2).float()}
            contexts = [ctx(layer, {s: tensors[s] for s in c.statistic.needs}) for c in captures]
            weights = [(i, c.statistic.key_weights(contexts[i])) for i, c in enumerate(captures)]
            weights = [(i, w.to(query.device)) for i, w in weights if w is not None]
            weighted, entry_values = {}, {}
            row_options = dict(softcap=kwargs.get("softcap"), sliding_window=kwargs.get("sliding_window"),
                               causal=getattr(module, "is_causal", True), chunk=self.row_chunk)
            entries = {i: c.statistic.entries(contexts[i]) for i, c in enumerate(captures)}
            entries = {i: e for i, e in entries.items() if e is not None}
            every_row = None
            if (captures and not weights and len(entries) == len(captures)
                    and lse_possible(query, mask, row_options["softcap"], row_options["causal"])):
                # only single entries: the flash kernel's logsumexp per row gives them, no rows
                output, lse = attention_with_lse(query, key, value, scaling)
                for i, (queries, keys) in entries.items():
                    entry_values[i] = entries_from_lse(query, key, lse, queries.to(query.device),
                                                       keys.to(query.device), scaling)
            elif not weights and query.dtype == torch.float32 and any(c.statistic.heads is None for c in captures):
                # a statistic needs every head's rows: they give the output too (no SDPA call).
                # Rows are float32: a float64 (or half) model keeps its own-precision SDPA output.
                every_row, output = attention_from_rows(query, key, value, mask, scaling, **row_options)
            elif weights:  # statistics of rows @ W: W rides along as extra value channels
                output, sums = attention_with_key_sums(
                    lambda q, k, v: sdpa(module, q, k, v, mask, **kwargs)[0],
                    query, key, value, torch.cat([w for _, w in weights], dim=-1))
                columns = 0
                for i, w in weights:
                    weighted[i] = sums[..., columns : columns + w.shape[-1]]
                    columns += w.shape[-1]
            else:
                output, _ = sdpa(module, query, key, value, mask, **kwargs)  # [B, T, H, d]
            if captures:
                def chunks(heads):
                    if heads is None and every_row is not None:
                        return every_row
                    return pattern_rows(query, key, mask, scaling, heads=heads, **row_options)

                for capture, result in zip(captures, fold_statistics(captures, contexts, chunks, weighted, entry_values, entries)):
                    out.captured.setdefault(capture.name, {})[layer] = result
                stash.clear()
            if z_hook is not None:  # after the fold: on the row path the output is complete only now
                output = z_hook(output.reshape(*output.shape[:2], -1)).view_as(output)
            return output, None

        return attend

    @contextlib.contextmanager
    def _fast_attention(self, layers: dict[int, Callable]) -> Iterator[None]:
        """Within the block, the bridge attention of each layer in ``layers`` runs the HF module
        with posbench's attention function and the given callback; the hooks around it fire as on
        the bridge (hook_in, rope cos/sin, hook_out; the HF module calls the q/k/v/o bridges)."""
        if not layers:
            yield
            return
        components = {layer: self.bridge.blocks[layer].attn for layer in layers}
        with attention_implementation(self.hf_model.config):
            for layer, component in components.items():
                # object.__setattr__: the bridge would pass `forward` on to the wrapped HF module
                object.__setattr__(component, "forward", _fast_forward(component, layers[layer]))
            try:
                yield
            finally:
                for component in components.values():
                    object.__delattr__(component, "forward")

    def _override_hooks(self, override: AttentionOverride, layer: int, ctx) -> list:
        stash: dict[str, torch.Tensor] = {}
        hooks = self._stash_hooks(layer, ("q", "k", *override.needs), stash)

        def replace_scores(scores, hook):
            c = ctx(layer, {**{site: stash[site] for site in override.needs}, "scores": scores})
            new = override.scores(stash["q"], stash["k"], c)
            if new.shape != scores.shape:
                raise PosbenchError(
                    f"{type(override).__name__} returned scores of shape {tuple(new.shape)} for layer {layer}; "
                    f"expected {tuple(scores.shape)}"
                )
            stash.clear()
            return new.to(scores.dtype)

        hooks.append((self._hook("scores", layer)[0], replace_scores))
        return hooks

    def _key_mask_hooks(self, batch, layers) -> list:
        blocked = ~batch.key_mask.to(self._device).bool()[:, None]  # [B, 1, T, T]

        def mask(scores, hook):
            return scores.masked_fill(blocked, torch.finfo(scores.dtype).min)

        return [(self._hook("scores", layer)[0], mask) for layer in layers]

    def _rebuilt_rotation_hooks(self, layer: int, sink: Callable[[dict[str, torch.Tensor]], None]) -> list:
        """Rotate q/k with the layer's own cos/sin (HF rotate-half layout, first r dims) and hand
        ``sink({"rot_q": ..., "rot_k": ...})`` the result, for components without post-RoPE hooks."""
        if self.card.attn_has_qk_norm:
            raise PosbenchError(
                f"{self.card.model_id}: the bridge exposes no post-RoPE q/k and the model normalises q/k "
                "before RoPE, so rotated q/k cannot be rebuilt here"
            )
        cache: dict[str, torch.Tensor] = {}

        def keep_raw(key):
            def hook(x, hook):
                cache[key] = x.detach().float()
                if key == "rope_sin":
                    r = cache["rope_cos"].shape[-1]
                    cos, sin = cache["rope_cos"][:, :, None, :], cache["rope_sin"][:, :, None, :]
                    rotated = {}
                    for site in ("q", "k"):
                        x_ = cache[site]
                        rot, rest = x_[..., :r], x_[..., r:]
                        half = r // 2
                        turned = rot * cos + torch.cat([-rot[..., half:], rot[..., :half]], dim=-1) * sin
                        rotated[f"rot_{site}"] = torch.cat([turned, rest], dim=-1)
                    sink(rotated)
                return x

            return hook

        return [(self._hook(site, layer)[0], keep_raw(site)) for site in ("q", "k", "rope_cos", "rope_sin")]

    # ------------------------------------------------------------------ weights and frequencies
    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.hf_model.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        logits = torch.nn.functional.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
        softcap = getattr(self.hf_model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    def rotary_inv_freq(self, layer: int) -> torch.Tensor | None:
        """Read from the model's rotary module, so scaled variants (llama3, YaRN) and per-layer
        bases (Gemma 3: 10k on sliding layers, 1M on global ones) come out right."""
        if self.card.position_encoding != "rope":
            return None
        layer_type = self.card.layer_types[layer]
        if self._inv_freq_owners is None:  # which module holds each buffer, found once (walking every
            # module is slow); the buffer is read at each call (dynamic RoPE re-registers it)
            self._inv_freq_owners = {
                name.rsplit(".", 1)[-1]: module
                for module_name, module in self.hf_model.named_modules()
                for name, _ in module.named_buffers(prefix=module_name, recurse=False)
                if "rotary_emb" in name and name.endswith("inv_freq") and "original_inv_freq" not in name.rsplit(".", 1)[-1]
            }
        owners = self._inv_freq_owners
        name = f"{layer_type}_inv_freq" if f"{layer_type}_inv_freq" in owners else "inv_freq"
        freq = getattr(owners[name], name) if name in owners else None
        return None if freq is None else freq.detach().float().cpu()

    def rotary_attention_factor(self, layer: int) -> float:
        """HF rotary modules keep it as ``attention_scaling`` (Gemma 3: ``{layer_type}_attention_scaling``)."""
        if self.card.position_encoding != "rope":
            return 1.0
        names = (f"{self.card.layer_types[layer]}_attention_scaling", "attention_scaling")
        for name, module in self.hf_model.named_modules():
            if name.endswith(("rotary_emb", "rotary_emb._original_component")):
                for attr in names:
                    if getattr(module, attr, None) is not None:
                        return float(getattr(module, attr))
        return 1.0

    def attention_scaling(self, layer: int) -> float:
        """The factor q.k is multiplied by before the softmax (1/sqrt(d_head) unless the model
        says otherwise, e.g. Gemma 3's query_pre_attn_scalar)."""
        for name, module in self.hf_model.named_modules():
            if name.endswith((f"layers.{layer}.self_attn", f"layers.{layer}.attention", f"h.{layer}.attn")):
                scale = getattr(module, "scaling", None)
                if scale is not None:
                    return float(scale)
        return self.card.head_dim**-0.5

    def head_output_weights(self, layer: int) -> torch.Tensor:
        o = self.bridge.blocks[layer].attn.o.original_component
        weight = o.weight.detach().float()
        n, d = self.card.n_heads, self.card.head_dim
        if isinstance(o, torch.nn.Linear):  # [D, H*d]
            return weight.T.reshape(n, d, -1)
        return weight.reshape(n, d, -1)  # GPT-2 Conv1D: [H*d, D]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "attn_implementation": self.attn_implementation, "weights": "unprocessed"}
