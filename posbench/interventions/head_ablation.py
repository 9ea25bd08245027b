"""Zero-ablate attention heads: a head's output z is set to 0 before W_O.

The common convention of causal-tracing and patching work (e.g. Wang et al. 2022, "Interpretability
in the Wild"; the ``z`` site). Zeroing z removes the head's W_O term; an o_proj bias,
if any, stays. Heads are *query* heads (0 .. n_heads-1) also under GQA.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import BadOptionError, HeadIndexError
from ..protocols import ActivationEdit
from ..sites import Edit


class HeadAblation(ActivationEdit):
    name = "ablate-heads"
    summary = "zero the output z of the given attention heads (before W_O)"
    spec_help = "LAYER.HEAD[,LAYER.HEAD...]  e.g. ablate-heads:3.1,4.2"

    def __init__(self, heads: list[tuple[int, int]] | tuple[int, int]):
        if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads):
            heads = [heads]
        self.heads = sorted({(int(layer), int(head)) for layer, head in heads})
        if not self.heads:
            raise BadOptionError("ablate-heads needs at least one LAYER.HEAD")

    @classmethod
    def from_spec(cls, arg: str) -> "HeadAblation":
        heads = []
        for part in filter(None, (p.strip() for p in arg.split(","))):
            try:
                layer, head = part.split(".")
                heads.append((int(layer), int(head)))
            except ValueError:
                raise BadOptionError(
                    f"malformed head '{part}' in --intervention ablate-heads: write LAYER.HEAD, "
                    "e.g. ablate-heads:3.1,4.2"
                ) from None
        return cls(heads)

    def params(self) -> dict[str, Any]:
        return {"heads": [f"{layer}.{head}" for layer, head in self.heads]}

    def validate(self, model) -> None:
        for layer, head in self.heads:
            if not 0 <= layer < model.n_layers:
                raise HeadIndexError(
                    f"layer {layer} out of range: {model.model_id} has {model.n_layers} layers "
                    f"(0-{model.n_layers - 1})"
                )
            if not 0 <= head < model.n_heads:
                raise HeadIndexError(
                    f"head {head} out of range: {model.model_id} has {model.n_heads} query heads "
                    f"per layer (0-{model.n_heads - 1})"
                )

    def edits(self, model) -> list[Edit]:
        by_layer: dict[int, list[int]] = {}
        for layer, head in self.heads:
            by_layer.setdefault(layer, []).append(head)

        def make(heads: list[int]):
            def zero_heads(z: torch.Tensor, ctx) -> torch.Tensor:  # [batch, pos, heads, d_head]
                out = z.clone()
                out[:, :, heads, :] = 0.0
                return out

            return zero_heads

        return [Edit("z", make(heads), layers=(layer,)) for layer, heads in by_layer.items()]
