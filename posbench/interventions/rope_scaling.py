"""RoPE frequency edits: activation edits that recompute each layer's rotary tables.

Each edit replaces ``rope_cos``/``rope_sin`` of the chosen layers by ``A * cos(p * f_k)`` and
``A * sin(p * f_k)``, with p the batch's position ids (after any position-id edit), f_k new
per-pair frequencies derived from the layer's *own* ``inv_freq`` (Gemma 3: 10k local, 1M global)
and A the layer's own rotary attention factor (times YaRN's, for YaRN):

* ``position-interpolation:F`` — Chen et al. 2023, "Extending Context Window of Large Language
  Models via Positional Interpolation": positions divided by F, i.e. every f_k / F (fractional
  positions without float position ids).
* ``rope-base:BASE`` — f_k = BASE^(-2k/r), a new base for the chosen layers; ``rope-base:scale=S``
  — "NTK-aware" scaling (bloc97 2023; Peng et al. 2023 §3.1): base * S^(r/(r-2)) relative to each
  layer's own base, i.e. f_k * S^(-2k/(r-2)).
* ``yarn:F`` — Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language
  Models": pairs that turn fewer than ``beta_slow`` times over the original context are
  interpolated (f_k / F), pairs that turn more than ``beta_fast`` times keep f_k, with a linear
  ramp over the pair index in between (as in the authors' and HuggingFace's code), and the
  attention temperature sqrt(1/t) = 0.1 ln F + 1 on both cos and sin.

A frequency edit recomputes the tables, so it replaces (not composes with) an earlier edit of
them: put it before band edits such as ``rope-position-free`` in the stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import BadOptionError, HeadIndexError, PosbenchError
from ..limits import MAX_INDEX
from ..options import build, option
from ..protocols import ActivationEdit
from ..sites import Edit

MAX_FACTOR = 1e6  # largest interpolation / extension factor or NTK scale
MAX_BASE = 1e12


class _RotaryFrequencies(ActivationEdit):
    """Recompute ``rope_cos``/``rope_sin`` from the batch's position ids with new frequencies."""

    layers: tuple[int, ...] | None = None

    def _config(self, **values: Any) -> Any:
        return build(self.Config, values, owner=f"intervention '{self.name}'")

    def inv_freq(self, model, layer: int) -> torch.Tensor:
        """The layer's new per-pair frequencies (rad/token)."""
        raise NotImplementedError

    def attention_factor(self, model, layer: int) -> float:
        return model.rotary_attention_factor(layer)

    def validate(self, model) -> None:
        if model.card.position_encoding != "rope":
            raise PosbenchError(
                f"{self.name} changes RoPE frequencies; {model.model_id} uses {model.card.position_encoding} "
                "positions, and a learned position table has no fractional positions (use position-shift or "
                "position-ids for integer edits)"
            )
        if self.layers is not None and max(self.layers) >= model.n_layers:
            raise HeadIndexError(
                f"layer {max(self.layers)} out of range: {model.model_id} has {model.n_layers} layers (0-{model.n_layers - 1})"
            )

    def _default_rope(self, model, layer: int) -> None:
        if model.card.rope_types[layer] not in (None, "default"):
            raise PosbenchError(
                f"{self.name} builds frequencies from a plain RoPE base, but layer {layer} of {model.model_id} uses "
                f"'{model.card.rope_types[layer]}' RoPE; use position-interpolation or rope-base:scale=, which "
                "act on the layer's own frequencies"
            )

    def edits(self, model) -> list[Edit]:
        edits = []
        for layer in self.layers if self.layers is not None else range(model.n_layers):
            freq, amplitude = self.inv_freq(model, layer).float(), self.attention_factor(model, layer)

            def table(wave):
                def recompute(x: torch.Tensor, ctx, freq=freq, amplitude=amplitude) -> torch.Tensor:
                    angles = ctx.batch.position_ids.to(x.device)[..., None].float() * freq.to(x.device)
                    return (wave(torch.cat([angles, angles], dim=-1)) * amplitude).to(x.dtype)

                return recompute

            edits.append(Edit("rope_cos", table(torch.cos), layers=(layer,)))
            edits.append(Edit("rope_sin", table(torch.sin), layers=(layer,)))
        return edits

    def _layer_params(self) -> dict[str, Any]:
        return {} if self.layers is None else {"layers": list(self.layers)}


def _layers(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(sorted(set(values)))


# ---------------------------------------------------------------------------- interpolation
@dataclass
class PositionInterpolationConfig:
    factor: float | None = option(None, min=1e-6, max=MAX_FACTOR, help="positions are divided by this (PI: the context extension ratio)")
    layers: tuple[int, ...] | None = option(None, min=0, max=MAX_INDEX, nonempty=True, help="layers to edit (default: all)")


class PositionInterpolation(_RotaryFrequencies):
    name = "position-interpolation"
    showcase = ("positional-heads", "4")  # offset heads at a quarter of the spacing
    summary = "divide every position by FACTOR inside RoPE (Chen et al. 2023); fractional positions"
    spec_help = "FACTOR[;layers=0,3]  e.g. position-interpolation:4"
    Config = PositionInterpolationConfig

    def __init__(self, factor: float | None = None, layers: Sequence[int] | None = None):
        opts = self._config(factor=factor, layers=layers)
        if opts.factor is None:
            raise BadOptionError("position-interpolation needs a FACTOR: write e.g. position-interpolation:4")
        self.factor, self.layers = opts.factor, _layers(opts.layers)

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        return {"factor": part}

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor, **self._layer_params()}

    def inv_freq(self, model, layer: int) -> torch.Tensor:
        return model.rotary_inv_freq(layer) / self.factor


# ---------------------------------------------------------------------------- base
@dataclass
class RopeBaseConfig:
    base: float | None = option(None, min=1.0 + 1e-9, max=MAX_BASE, help="the new RoPE base theta of the chosen layers")
    scale: float | None = option(None, min=1e-6, max=MAX_FACTOR, help="NTK-aware: each layer's base times scale^(r/(r-2))")
    layers: tuple[int, ...] | None = option(None, min=0, max=MAX_INDEX, nonempty=True, help="layers to edit (default: all)")


class RopeBase(_RotaryFrequencies):
    name = "rope-base"
    showcase = ("sinks", "scale=4")
    summary = "a new RoPE base (BASE), or NTK-aware scaling of each layer's own base (scale=S)"
    spec_help = "BASE | scale=S [;layers=0,3]  e.g. rope-base:500000 or rope-base:scale=4"
    Config = RopeBaseConfig

    def __init__(self, base: float | None = None, scale: float | None = None, layers: Sequence[int] | None = None):
        opts = self._config(base=base, scale=scale, layers=layers)
        if (opts.base is None) == (opts.scale is None):
            raise BadOptionError("rope-base takes either a BASE (rope-base:500000) or scale=S (rope-base:scale=4)")
        self.base, self.scale, self.layers = opts.base, opts.scale, _layers(opts.layers)

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        return {"base": part}

    def params(self) -> dict[str, Any]:
        out = {"base": self.base} if self.base is not None else {"scale": self.scale}
        return {**out, **self._layer_params()}

    def inv_freq(self, model, layer: int) -> torch.Tensor:
        own = model.rotary_inv_freq(layer)
        r = 2 * len(own)
        k = torch.arange(0, r, 2, dtype=torch.int64).float()
        if self.base is not None:
            self._default_rope(model, layer)
            return 1.0 / (self.base ** (k / r))
        return own * self.scale ** (-k / (r - 2))


# ---------------------------------------------------------------------------- YaRN
@dataclass
class YarnConfig:
    factor: float | None = option(None, min=1.0, max=MAX_FACTOR, help="context extension ratio s")
    original: int | None = option(None, min=1, max=10**8, help="the context the model was trained on (default: the card's)")
    beta_fast: float = option(32.0, min=0.0, max=MAX_FACTOR, help="pairs turning more often than this over the original context keep their frequency")
    beta_slow: float = option(1.0, min=0.0, max=MAX_FACTOR, help="pairs turning less often than this are interpolated by the factor")
    layers: tuple[int, ...] | None = option(None, min=0, max=MAX_INDEX, nonempty=True, help="layers to edit (default: all)")


class Yarn(_RotaryFrequencies):
    name = "yarn"
    showcase = ("sinks", "4")
    summary = "YaRN (Peng et al. 2023): per-band interpolation by FACTOR plus the attention temperature"
    spec_help = "FACTOR[;original=L;beta_fast=32;beta_slow=1;layers=..]  e.g. yarn:4"
    Config = YarnConfig

    def __init__(self, factor: float | None = None, original: int | None = None, beta_fast: float = 32.0,
                 beta_slow: float = 1.0, layers: Sequence[int] | None = None):
        opts = self._config(factor=factor, original=original, beta_fast=beta_fast, beta_slow=beta_slow, layers=layers)
        if opts.factor is None:
            raise BadOptionError("yarn needs a FACTOR: write e.g. yarn:4")
        if opts.beta_fast <= opts.beta_slow:
            raise BadOptionError(f"yarn: beta_fast ({opts.beta_fast:g}) must exceed beta_slow ({opts.beta_slow:g})")
        self.factor, self.original = opts.factor, opts.original
        self.beta_fast, self.beta_slow, self.layers = opts.beta_fast, opts.beta_slow, _layers(opts.layers)

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        return {"factor": part}

    def params(self) -> dict[str, Any]:
        out = {"factor": self.factor, "original": self.original, "beta_fast": self.beta_fast, "beta_slow": self.beta_slow}
        return {**out, **self._layer_params()}

    def validate(self, model) -> None:
        super().validate(model)
        if self.original is None and model.card.context_length is None:
            raise BadOptionError(f"yarn: {model.model_id} does not state its context length; give original=L")

    def inv_freq(self, model, layer: int) -> torch.Tensor:
        self._default_rope(model, layer)
        own = model.rotary_inv_freq(layer)
        base, r = model.card.rope_bases[layer], 2 * len(own)
        context = self.original or model.card.context_length

        def pair_turning(times: float) -> float:  # the (fractional) pair index that turns `times` times
            return r * math.log(context / (times * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(pair_turning(self.beta_fast)), 0)
        high = min(math.ceil(pair_turning(self.beta_slow)), r - 1)
        ramp = ((torch.arange(len(own)).float() - low) / max(high - low, 1e-3)).clamp(0, 1)  # 0: keep, 1: interpolate
        return own * (1 - ramp) + own / self.factor * ramp

    def attention_factor(self, model, layer: int) -> float:
        return model.rotary_attention_factor(layer) * (0.1 * math.log(self.factor) + 1.0)
