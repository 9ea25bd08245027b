"""Zero-ablate attention heads: a head's output z is set to 0 before W_O.

The common convention of causal-tracing and patching work (e.g. Wang et al. 2022, "Interpretability
in the Wild"; the ``z`` site). Zeroing z removes the head's W_O term; an o_proj bias,
if any, stays. Heads are *query* heads (0 .. n_heads-1) also under GQA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import HeadIndexError
from ..limits import MAX_INDEX
from ..options import build, option
from ..protocols import ActivationEdit
from ..sites import Edit


def layer_head(text: str) -> tuple[int, int] | None:
    """``"3.1"`` as (layer 3, head 1), or None when the text is not LAYER.HEAD within bounds."""
    layer, sep, head = text.strip().partition(".")
    if not sep or not layer.isdigit() or not head.isdigit():
        return None
    pair = int(layer), int(head)
    return pair if max(pair) <= MAX_INDEX else None


def _head_problem(text: str) -> str | None:
    if layer_head(text) is None:
        return f"malformed head '{text}': write LAYER.HEAD with indices 0-{MAX_INDEX}, e.g. ablate-heads:3.1,4.2"
    return None


@dataclass
class HeadAblationConfig:
    heads: tuple[str, ...] = option((), nonempty=True, check=_head_problem, form="LAYER.HEAD",
                                    help="query heads to ablate, e.g. 3.1,4.2")


class HeadAblation(ActivationEdit):
    name = "ablate-heads"
    summary = "zero the output z of the given attention heads (before W_O)"
    spec_help = "LAYER.HEAD[,LAYER.HEAD...]  e.g. ablate-heads:3.1,4.2"
    Config = HeadAblationConfig

    def __init__(self, heads: Any):
        """``heads``: (layer, head) pairs, one pair, or LAYER.HEAD text (``"3.1,4.2"``)."""
        if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads):
            heads = [heads]
        if isinstance(heads, (list, tuple)):
            heads = [".".join(map(str, h)) if isinstance(h, (list, tuple)) else h for h in heads]
        config = build(self.Config, {"heads": heads}, owner=f"intervention '{self.name}'")
        self.heads = sorted({layer_head(h) for h in config.heads})

    @classmethod
    def bare_spec(cls, part: str) -> dict[str, Any]:
        return {"heads": part}

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
