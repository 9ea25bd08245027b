"""The TransformerLens 4.x backend: a ``TransformerBridge`` over the HuggingFace model.

Eager attention (the bridge re-implements attention so ``hook_attn_scores`` is pre-softmax and
``hook_pattern`` post-softmax, and edits to either flow into the output), unprocessed weights (no
layer-norm folding or centring, which would change residual norms and massive activations).
This module is the only place that knows TransformerLens hook names.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

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

ROW_CHUNK = 256  # query rows an attention statistic sees at once: [B, H, 256, T], never [B, H, T, T]

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
assert set(_HOOKS) == set(SITES)


class _StopForward(Exception):
    """Raised by a hook to skip the final norm's consumer (the unembedding) when no logits are needed."""


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


class TransformerLensBackend(Backend):
    name = "transformer-lens"
    attn_implementation = "eager"

    def __init__(self, bridge, hf_model, card):
        self.bridge = bridge
        self.hf_model = hf_model
        self.card = card
        self._fires: dict[str, bool] = {}
        self._facts: ModelFacts | None = None
        self.row_chunk = ROW_CHUNK

    @classmethod
    def wrap(cls, hf_model, tokenizer, model_id: str, card) -> "TransformerLensBackend":
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
        bridge_tokenizer = copy.deepcopy(tokenizer)
        bridge_tokenizer.init_kwargs.setdefault("name_or_path", model_id)
        bridge_tokenizer.init_kwargs["add_bos_token"] = True
        # A zoo alias that TransformerLens also knows (gemma-3-270m) would make it announce a
        # hub download it never does: give the bridge a name outside its alias table.
        bridge_name = f"posbench/{model_id}" if resolve_model_alias(model_id) is not None else model_id
        bridge = TransformerBridge.boot_transformers(
            bridge_name, hf_model=hf_model, tokenizer=bridge_tokenizer, device=str(hf_model.device)
        )
        return cls(bridge, hf_model, card)

    # ------------------------------------------------------------------ facts and sites
    @property
    def facts(self) -> ModelFacts:
        if self._facts is None:
            c = self.card
            self._facts = ModelFacts(
                n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, d_head=c.head_dim,
                n_pairs=(c.rotary_dims or c.head_dim) // 2 if c.position_encoding == "rope" else 0,
                scaling=tuple(self.attention_scaling(layer) for layer in range(c.n_layers)),
            )
        return self._facts

    def _hook(self, site: str, layer: int | None) -> tuple[str, Callable, Callable]:
        """(hook name, to canonical shape, back to the hook's shape) for a site."""
        if site in _NORMED:
            normed = _NORMED[site].format(layer=layer)
            if normed in self.bridge.hook_dict:
                return normed, _heads_first, _heads_first
        return _HOOKS[site].format(layer=layer), _identity, _identity

    def _fires_in_forward(self, name: str) -> bool:
        """Whether a hook point is actually called (some bridge components list hook points
        they never call, e.g. hook_rot_q on GPT-NeoX)."""
        if name not in self.bridge.hook_dict:
            return False
        if name not in self._fires:
            fired = []
            ids = torch.zeros(1, 2, dtype=torch.long, device=self._device)
            try:
                self.bridge.run_with_hooks(
                    ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(2, device=self._device)[None],
                    fwd_hooks=[(name, lambda x, hook: fired.append(1) or x)],
                )
            finally:
                self.bridge.reset_hooks(including_permanent=False)
            self._fires[name] = bool(fired)
        return self._fires[name]

    def _rebuilds_rotation(self, layer: int) -> bool:
        """GPT-NeoX-style components fire no post-RoPE hooks: rotated q/k are rebuilt from q, k
        and the layer's cos/sin (readable, not editable)."""
        return (
            self.card.position_encoding == "rope"
            and not self._fires_in_forward(self._hook("rot_q", layer)[0])
            and self._fires_in_forward(self._hook("rope_cos", layer)[0])
        )

    def supports(self, site: str, edit: bool = False) -> bool:
        layer = None if site in LAYERLESS_SITES else 0
        if site in ("rot_q", "rot_k") and not edit and self._rebuilds_rotation(0):
            return not self.card.attn_has_qk_norm
        return self._fires_in_forward(self._hook(site, layer)[0])

    def _require(self, site: str, edit: bool) -> None:
        if not self.supports(site, edit):
            what = "edited" if edit else "read"
            hint = ""
            if site in ("rot_q", "rot_k"):
                hint = (": the bridge exposes no post-RoPE q/k for this architecture; edit "
                        "rope_cos/rope_sin instead (rope-position-free)")
            raise PosbenchError(f"site '{site}' cannot be {what} on {self.card.model_id} ({self.card.architecture}){hint}")

    @property
    def _device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

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
        out = RunOutput()
        hooks: list[tuple[str, Callable]] = []

        def ctx(layer, tensors=None) -> Context:
            return Context(batch=batch, layer=layer, facts=facts, tensors=tensors or {}, unembed=self.unembed)

        # 1. edits (interventions), in order; a tensor edited here is what everything after sees
        for edit in edits:
            self._require(edit.site, edit=True)
            layers = (None,) if edit.site in LAYERLESS_SITES else (edit.layers or all_layers)
            for layer in layers:
                name, to_canon, from_canon = self._hook(edit.site, layer)

                def apply(x, hook, fn=edit.fn, layer=layer, to_canon=to_canon, from_canon=from_canon):
                    return from_canon(fn(to_canon(x), ctx(layer)))

                hooks.append((name, apply))

        # 2. attention overrides: stash pre-RoPE q/k, replace the masked pre-softmax scores;
        # then an explicit key mask, on top of whatever computed the scores
        for override in overrides:
            for layer in override.layers or all_layers:
                hooks.extend(self._override_hooks(override, layer, ctx))
        if batch.key_mask is not None:
            hooks.extend(self._key_mask_hooks(batch, all_layers))

        # 3. captures
        for capture in captures:
            if isinstance(capture, AttentionCapture):
                for layer in capture.layers or all_layers:
                    hooks.extend(self._attention_hooks(capture, layer, ctx, out))
                continue
            self._require(capture.site, edit=False)
            if capture.site in LAYERLESS_SITES:
                name, to_canon, _ = self._hook(capture.site, None)

                def keep_layerless(x, hook, c=capture, to_canon=to_canon):
                    out.captured[c.name] = c.reduce(to_canon(x.detach()), ctx(None))
                    return x

                hooks.append((name, keep_layerless))
                continue
            results = out.captured.setdefault(capture.name, {})
            for layer in capture.layers or all_layers:
                if capture.site in ("rot_q", "rot_k") and self._rebuilds_rotation(layer):
                    def keep_rebuilt(tensors, c=capture, layer=layer, results=results):
                        results[layer] = c.reduce(tensors[c.site], ctx(layer))

                    hooks.extend(self._rebuilt_rotation_hooks(layer, keep_rebuilt))
                    continue
                name, to_canon, _ = self._hook(capture.site, layer)

                def keep(x, hook, c=capture, layer=layer, results=results, to_canon=to_canon):
                    results[layer] = c.reduce(to_canon(x.detach()), ctx(layer))
                    return x

                hooks.append((name, keep))

        if not logits:
            def stop(x, hook):
                raise _StopForward

            hooks.append((_HOOKS["final_norm"], stop))
        try:
            out.logits = self.bridge.run_with_hooks(
                batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, fwd_hooks=hooks
            )
        except _StopForward:
            out.logits = None
        finally:
            self.bridge.reset_hooks(including_permanent=False)
        return out

    def _stash_hooks(self, layer: int, sites: Sequence[str], stash: dict[str, torch.Tensor]) -> list:
        """Hooks that put the canonical tensors of ``sites`` at ``layer`` into ``stash``."""
        hooks = []
        rebuilt = [s for s in sites if s in ("rot_q", "rot_k") and self._rebuilds_rotation(layer)]
        if rebuilt:
            hooks.extend(self._rebuilt_rotation_hooks(layer, stash.update))
        for site in sites:
            if site in rebuilt:
                continue
            self._require(site, edit=False)
            name, to_canon, _ = self._hook(site, layer)

            def keep(x, hook, site=site, to_canon=to_canon):
                stash[site] = to_canon(x.detach())
                return x

            hooks.append((name, keep))
        return hooks

    def _attention_hooks(self, capture: AttentionCapture, layer: int, ctx, out: RunOutput) -> list:
        """Fold the statistic over ROW_CHUNK-row slices of the eager pattern of ``layer``."""
        stash: dict[str, torch.Tensor] = {}
        hooks = self._stash_hooks(layer, capture.statistic.needs, stash)
        results = out.captured.setdefault(capture.name, {})
        chunk = self.row_chunk

        def fold(pattern, hook):
            c = ctx(layer, {k: v.float() for k, v in stash.items()})
            rows = pattern.detach().float()
            stat = capture.statistic
            state = stat.start(c)
            for start in range(0, rows.shape[2], chunk):
                state = stat.update(state, rows[:, :, start : start + chunk], start, c)
            results[layer] = stat.finish(state, c)
            stash.clear()
            return pattern

        hooks.append((self._hook("pattern", layer)[0], fold))
        return hooks

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
        buffers = {
            name.rsplit(".", 1)[-1]: buf
            for name, buf in self.hf_model.named_buffers()
            if "rotary_emb" in name and name.endswith("inv_freq") and "original_inv_freq" not in name.rsplit(".", 1)[-1]
        }
        freq = buffers.get(f"{layer_type}_inv_freq", buffers.get("inv_freq"))
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
