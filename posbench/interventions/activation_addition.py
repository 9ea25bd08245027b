"""Activation addition: add a multiple of a direction to the residual stream at one layer.

Arditi et al. 2024: ``x <- x + c r`` at layer l's residual input (``resid_pre``), at all positions,
with r the difference-in-means refusal direction (not normalised) measured at l; ``c = +1`` makes a
model refuse harmless requests, ``c = -1`` removes refusal of harmful ones. (Turner et al. 2023,
"Activation Addition", add steering vectors the same way.)

On the command line: ``add-direction:run=RUN_ID;coeff=-1`` (default store, or ``;store=PATH``),
``add-direction:file=D.json;coeff=1``; ``;layer=L`` adds the run's difference in means measured at
layer L, at layer L, instead of the selected layer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import BadOptionError, HeadIndexError
from ..options import build, option
from ..protocols import ActivationEdit
from ..sites import Edit
from .directional_ablation import DirectionSourceConfig, check_width, parse_direction_spec

if TYPE_CHECKING:  # pragma: no cover
    from posbench.probes.refusal.direction import RefusalDirection


@dataclass
class ActivationAdditionConfig(DirectionSourceConfig):
    """``--intervention add-direction:...``: the direction's source, and the multiple added."""

    coeff: float = option(1.0, min=-1e6, max=1e6, help="the multiple of the direction added (-1 removes refusal)")


class ActivationAddition(ActivationEdit):
    name = "add-direction"
    showcase_note = ("seen through the refusal probe's own loop, which fits the direction first: "
                     "posbench run refusal -m M -o conditions=baseline,ablate-direction,add-direction")
    summary = "add coeff x a direction (e.g. the refusal direction) to the residual stream entering one layer"
    spec_help = "run=RUN_ID[;store=PATH][;layer=L][;coeff=C] | file=DIRECTION.json[;coeff=C]  e.g. add-direction:run=1a2b3c;coeff=-1"

    Config = ActivationAdditionConfig

    def __init__(self, vector: torch.Tensor, layer: int, coeff: float = 1.0, model_id: str | None = None,
                 source: str = "tensor"):
        self.vector = torch.as_tensor(vector).detach().double().flatten()
        if not torch.isfinite(self.vector).all():
            raise BadOptionError("add-direction: the vector must be finite")
        self.layer = int(layer)
        self.coeff = build(self.Config, {"coeff": coeff}, f"intervention '{self.name}'").coeff
        self.model_id = model_id
        self.source = source

    @classmethod
    def from_direction(cls, direction: "RefusalDirection", coeff: float = 1.0, layer: int | None = None) -> "ActivationAddition":
        """Add ``coeff`` times the direction's difference in means at its layer (or at ``layer``,
        measured there)."""
        layer = direction.layer if layer is None else int(layer)
        return cls(direction.at_layer(layer), layer, coeff, direction.model_id,
                   source=str(direction.meta.get("source", "direction")))

    @classmethod
    def from_spec(cls, arg: str) -> "ActivationAddition":
        direction, config = parse_direction_spec(cls, arg)
        return cls.from_direction(direction, coeff=config.coeff)

    def params(self) -> dict[str, Any]:
        import hashlib

        digest = hashlib.sha256(self.vector.float().numpy().tobytes()).hexdigest()[:12]
        return {"source": self.source, "layer": self.layer, "coeff": self.coeff,
                "norm": round(float(self.vector.norm()), 6), "digest": digest}

    def validate(self, model) -> None:
        check_width(self.vector, model, self.model_id, self.name)
        if not 0 <= self.layer < model.n_layers:
            raise HeadIndexError(f"add-direction: layer {self.layer} out of range: {model.model_id} has "
                                 f"{model.n_layers} layers (0-{model.n_layers - 1})")

    def edits(self, model) -> list[Edit]:
        shift = self.coeff * self.vector

        def add(x: torch.Tensor, ctx) -> torch.Tensor:
            return (x.double() + shift.to(x.device)).to(x.dtype)

        return [Edit("resid_pre", add, layers=(self.layer,))]
