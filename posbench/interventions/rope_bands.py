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

from typing import Any

import torch

from ..errors import BadOptionError, HeadIndexError, PosbenchError
from ..protocols import ActivationEdit
from ..sites import Edit


def parse_index_list(text: str, what: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise BadOptionError(f"malformed {what} '{part}': write numbers or ranges like 0-3,7") from None
    return sorted(set(out))


def _parse_spec(arg: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in arg.split(";"))):
        key, sep, value = part.partition("=")
        if not sep:  # "0.25" or "0.25,highest"
            bits = [b.strip() for b in key.split(",")]
            try:
                opts["fraction"] = float(bits[0])
            except ValueError:
                raise BadOptionError(f"malformed RoPE band spec '{part}': write FRACTION, e.g. 0.25, or pairs=0-3") from None
            opts["highest"] = "highest" in bits[1:]
            continue
        key = key.strip()
        if key in ("pairs", "layers", "heads"):
            opts[key] = parse_index_list(value, key[:-1])
        elif key == "target":
            opts[key] = value.strip()
        elif key == "fraction":
            opts[key] = float(value)
        else:
            raise BadOptionError(f"unknown RoPE band option '{key}': use pairs=, layers=, heads=, target= or a fraction")
    return opts


class _RopeBand(ActivationEdit):
    def __init__(self, pairs: list[int] | None = None, fraction: float | None = None, highest: bool = False,
                 layers: list[int] | None = None):
        if (pairs is None) == (fraction is None):
            raise BadOptionError(f"{self.name}: give either pairs or fraction")
        if fraction is not None and not 0 < fraction <= 1:
            raise BadOptionError(f"{self.name}: fraction must be in (0, 1], got {fraction}")
        self.pairs = None if pairs is None else sorted(set(int(p) for p in pairs))
        self.fraction = fraction
        self.highest = bool(highest)
        self.layers = None if layers is None else sorted(set(int(x) for x in layers))

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
    summary = "stop chosen rotary pairs from rotating (p-RoPE): they keep content, lose position"
    spec_help = "FRACTION[,highest] | pairs=0-3,7[;layers=0-5]  e.g. rope-position-free:0.25"

    @classmethod
    def from_spec(cls, arg: str) -> "RopePositionFree":
        opts = _parse_spec(arg)
        if "target" in opts or "heads" in opts:
            raise BadOptionError("rope-position-free takes pairs=, layers= or a fraction (not heads/target)")
        return cls(**opts)

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
    summary = "zero chosen rotary pairs in rotated q and/or k (removes their share of the score)"
    spec_help = "pairs=0-3 | FRACTION[,highest] [;layers=..][;heads=..][;target=qk|q|k]"

    def __init__(self, pairs=None, fraction=None, highest=False, layers=None, heads=None, target="qk"):
        super().__init__(pairs, fraction, highest, layers)
        if target not in ("qk", "q", "k"):
            raise BadOptionError(f"rope-zero-band target must be qk, q or k, got '{target}'")
        self.heads = None if heads is None else sorted(set(int(h) for h in heads))
        self.target = target

    @classmethod
    def from_spec(cls, arg: str) -> "RopeBandZero":
        return cls(**_parse_spec(arg))

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
