"""RoPE band interventions: make rotary frequency bands position-free, or remove them from q/k.

* ``rope-position-free`` — p-RoPE (Barbero et al., "Round and Round We Go! What makes Rotary
  Positional Encodings useful?", ICLR 2025): the chosen rotary pairs stop rotating (cos = 1,
  sin = 0), so they still carry q.k content but no position. ``fraction=0.25`` takes the lowest
  25% of each layer's own frequencies (``highest=True`` the highest, Barbero's "reversed" control).
* ``rope-zero-band`` — zero the chosen pairs in the rotated q and/or k, removing their share of
  the score (DoPE-style band masking, Xiong et al. 2025).

Pairs use HuggingFace's rotate-half layout: pair k is dims (k, k + rotary_dims/2). Frequencies
come from each layer's own ``inv_freq`` (Gemma 3: 10k local, 1M global).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadOptionError, HeadIndexError, PosbenchError
from ..limits import MAX_INDEX
from ..options import build, option
from ..protocols import ActivationEdit
from ..sites import Edit


def _positive(value: float) -> str | None:
    return "the fraction must be above 0" if value <= 0 else None


@dataclass
class RopePositionFreeConfig:
    pairs: tuple[int, ...] | None = option(None, min=0, max=MAX_INDEX, nonempty=True,
                                           help="rotary pairs (rotate-half layout), e.g. 0-3,7")
    fraction: float | None = option(None, min=0.0, max=1.0, check=_positive,
                                    help="share of each layer's frequencies, lowest first")
    highest: bool = option(False, help="take the highest frequencies instead of the lowest")
    layers: tuple[int, ...] | None = option(None, min=0, max=MAX_INDEX, nonempty=True, help="layers (default all)")


@dataclass
class RopeBandZeroConfig(RopePositionFreeConfig):
    heads: tuple[int, ...] | None = option(None, min=0, max=MAX_INDEX, nonempty=True,
                                           help="query heads (default all)")
    target: str = option("qk", choices=("qk", "q", "k"), help="zero the pairs in q, k or both")


class _RopeBand(ActivationEdit):
    Config = RopePositionFreeConfig

    def __init__(self, pairs: list[int] | None = None, fraction: float | None = None, highest: bool = False,
                 layers: list[int] | None = None, **more: Any):
        config = build(self.Config, dict(pairs=pairs, fraction=fraction, highest=highest, layers=layers, **more),
                       owner=f"intervention '{self.name}'")
        if (config.pairs is None) == (config.fraction is None):
            which = "both pairs and a fraction were given" if config.pairs is not None else "no band was given"
            raise BadOptionError(f"{self.name}: {which}: give either pairs (e.g. pairs=0-3) or a fraction (e.g. 0.25)")
        self.config = config
        self.pairs = None if config.pairs is None else sorted(set(config.pairs))
        self.fraction = config.fraction
        self.highest = config.highest
        self.layers = None if config.layers is None else sorted(set(config.layers))

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        """``FRACTION`` or ``FRACTION,highest`` (or ``,lowest``)."""
        fraction, *band = [b.strip() for b in part.split(",")]
        if any(b not in ("highest", "lowest") for b in band) or len(band) > 1:
            raise BadOptionError(
                f"malformed RoPE band '{part}' in --intervention {cls.name}: write FRACTION[,highest] "
                "(e.g. 0.25,highest) or KEY=VALUE (e.g. pairs=0-3)"
            )
        return {"fraction": fraction, "highest": band == ["highest"]}

    def _n_pairs(self, model) -> int:
        return (model.card.rotary_dims or model.d_head) // 2

    def validate(self, model) -> None:
        if model.card.position_encoding != "rope":
            raise PosbenchError(
                f"{self.name} needs a RoPE model; {model.model_id} uses {model.card.position_encoding} positions"
            )
        n_pairs = self._n_pairs(model)
        if self.pairs is not None and (min(self.pairs) < 0 or max(self.pairs) >= n_pairs):
            raise HeadIndexError(f"rotary pair out of range: {model.model_id} has {n_pairs} pairs (0-{n_pairs - 1})")
        if self.layers is not None and (min(self.layers) < 0 or max(self.layers) >= model.n_layers):
            raise HeadIndexError(f"layer out of range: {model.model_id} has {model.n_layers} layers (0-{model.n_layers - 1})")

    def pairs_for(self, model, layer: int) -> list[int]:
        """The pairs this intervention touches in ``layer`` (fractions use the layer's own frequencies)."""
        if self.pairs is not None:
            return self.pairs
        freq = model.rotary_inv_freq(layer)
        count = max(1, round(self.fraction * len(freq)))
        order = torch.argsort(freq, descending=self.highest)  # ascending = lowest frequencies first
        return sorted(order[:count].tolist())

    def _layers(self, model) -> list[int]:
        return self.layers if self.layers is not None else list(range(model.n_layers))

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pairs is not None:
            out["pairs"] = self.pairs
        else:
            out["fraction"] = self.fraction
            out["band"] = "highest" if self.highest else "lowest"
        if self.layers is not None:
            out["layers"] = self.layers
        return out


class RopePositionFree(_RopeBand):
    name = "rope-position-free"
    showcase = ("positional-heads", "0.25,highest")  # offset heads need the fast pairs (Barbero et al.)
    summary = "stop chosen rotary pairs from rotating (p-RoPE): they keep content, lose position"
    spec_help = "FRACTION[,highest] | pairs=0-3,7[;layers=0-5]  e.g. rope-position-free:0.25"

    def edits(self, model) -> list[Edit]:
        n_pairs = self._n_pairs(model)
        edits = []
        for layer in self._layers(model):
            dims = self.pairs_for(model, layer)
            idx = torch.tensor(dims + [p + n_pairs for p in dims])

            def fix_cos(cos: torch.Tensor, ctx, idx=idx) -> torch.Tensor:
                # cos carries the RoPE attention scaling (1 for default RoPE, != 1 for YaRN);
                # position 0 holds it unrotated, so a position-free pair keeps that value.
                out = cos.clone()
                out[..., idx] = cos[..., :1, idx].abs()
                return out

            def fix_sin(sin: torch.Tensor, ctx, idx=idx) -> torch.Tensor:
                out = sin.clone()
                out[..., idx] = 0.0
                return out

            edits.append(Edit("rope_cos", fix_cos, layers=(layer,)))
            edits.append(Edit("rope_sin", fix_sin, layers=(layer,)))
        return edits


class RopeBandZero(_RopeBand):
    name = "rope-zero-band"
    showcase = ("positional-heads", "0.25")  # the slow pairs carry content (Barbero et al.)
    summary = "zero chosen rotary pairs in rotated q and/or k (removes their share of the score)"
    spec_help = "pairs=0-3 | FRACTION[,highest] [;layers=..][;heads=..][;target=qk|q|k]"
    Config = RopeBandZeroConfig

    def __init__(self, pairs=None, fraction=None, highest=False, layers=None, heads=None, target="qk"):
        super().__init__(pairs, fraction, highest, layers, heads=heads, target=target)
        self.heads = None if self.config.heads is None else sorted(set(self.config.heads))
        self.target = self.config.target

    def validate(self, model) -> None:
        super().validate(model)
        if not model.supports("rot_q", edit=True):
            raise PosbenchError(
                f"rope-zero-band needs post-RoPE q/k sites, which the backend cannot edit on "
                f"{model.card.architecture}; use rope-position-free, which edits cos/sin"
            )
        if self.heads is not None and (min(self.heads) < 0 or max(self.heads) >= model.n_heads):
            raise HeadIndexError(f"head out of range: {model.model_id} has {model.n_heads} query heads (0-{model.n_heads - 1})")

    def params(self) -> dict[str, Any]:
        out = super().params()
        out["target"] = self.target
        if self.heads is not None:
            out["heads"] = self.heads
        return out

    def edits(self, model) -> list[Edit]:
        n_pairs = self._n_pairs(model)
        q_heads = self.heads if self.heads is not None else list(range(model.n_heads))
        kv_heads = sorted({model.card.kv_head_of(h) for h in q_heads})
        edits = []
        for layer in self._layers(model):
            dims = self.pairs_for(model, layer)
            idx = torch.tensor(dims + [p + n_pairs for p in dims])

            def make(heads, idx=idx):
                def zero(x: torch.Tensor, ctx) -> torch.Tensor:  # [batch, pos, heads, d_head]
                    out = x.clone()
                    sub = out[:, :, heads]
                    sub[..., idx] = 0.0
                    out[:, :, heads] = sub
                    return out

                return zero

            if "q" in self.target:
                edits.append(Edit("rot_q", make(q_heads), layers=(layer,)))
            if "k" in self.target:
                edits.append(Edit("rot_k", make(kv_heads), layers=(layer,)))
        return edits
