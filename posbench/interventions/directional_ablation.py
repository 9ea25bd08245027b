"""Directional ablation: remove a direction from the residual stream everywhere.

Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single Direction": with r̂ the
unit refusal direction, ``x <- x - (x . r̂) r̂`` at every layer's residual input (``resid_pre``)
and at every attention and MLP output (``attn_out``, ``mlp_out``), at all positions, so no
component ever reads or writes r̂. The last block's output (``resid_post``) is projected too: on
models that normalise a block's outputs before adding them (Gemma 2/3) the attention and MLP sites
sit before that norm, and this keeps the stream the final norm reads free of r̂ as well (on
additive models it is already free of it, and the extra projection changes nothing).

On the command line the direction comes from a stored ``refusal`` run or a direction file:
``ablate-direction:run=RUN_ID`` (default store, or ``;store=PATH``), ``ablate-direction:file=D.json``
(``RefusalDirection.save``), and ``;layer=L`` takes the run's difference in means measured at
layer L instead of the selected one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import BadOptionError, PosbenchError
from ..limits import MAX_INDEX
from ..options import build, option, parse_spec
from ..protocols import ActivationEdit
from ..sites import Edit

if TYPE_CHECKING:  # pragma: no cover
    from posbench.probes.refusal.direction import RefusalDirection

@dataclass
class DirectionSourceConfig:
    """Where ``--intervention ablate-direction:...`` takes its direction from."""

    run: str | None = option(None, help="a stored 'refusal' run (`posbench runs --probe refusal` lists them)")
    store: str | None = option(None, help="the results store holding that run (default: the default store)")
    file: str | None = option(None, help="a direction JSON written by RefusalDirection.save")
    layer: int | None = option(None, min=0, max=MAX_INDEX,
                               help="take the difference in means measured at this layer instead of the selected one")


def load_direction(config: DirectionSourceConfig, name: str) -> "RefusalDirection":
    """The ``RefusalDirection`` a parsed spec points at (``run=`` [+ ``store=``] or ``file=``),
    at ``layer`` when given."""
    from posbench.probes.refusal.direction import RefusalDirection

    if (config.run is None) == (config.file is None):
        raise BadOptionError(f"{name} needs the direction's source, once: run=RUN_ID (a stored 'refusal' run; "
                             "`posbench runs --probe refusal` lists them) or file=DIRECTION.json")
    if config.run is not None:
        return RefusalDirection.from_store(config.run, config.store, layer=config.layer)
    if config.store is not None:
        raise BadOptionError(f"{name}: store= goes with run=, not file=")
    direction = RefusalDirection.load(config.file)
    if config.layer is not None:
        direction.at_layer(config.layer)
        direction.layer = config.layer
    return direction


def parse_direction_spec(cls: type, arg: str) -> tuple["RefusalDirection", Any]:
    """An intervention spec parsed against ``cls.Config`` (a ``DirectionSourceConfig``) into the
    loaded direction and the config."""
    owner = f"intervention '{cls.name}'"
    config = build(cls.Config, parse_spec(cls.Config, arg, owner, grammar=cls.spec_help), owner)
    return load_direction(config, cls.name), config


def _unit(vector: torch.Tensor) -> torch.Tensor:
    vector = torch.as_tensor(vector).detach().double().flatten()
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise BadOptionError("the direction must be a finite, non-zero vector")
    return vector / norm


def check_width(vector: torch.Tensor, model, model_id: str | None, name: str) -> None:
    if vector.numel() != model.card.d_model:
        raise PosbenchError(f"{name}: the direction has {vector.numel()} dimensions but {model.model_id}'s residual "
                            f"stream has {model.card.d_model}: use a direction measured on this model")
    if model_id is not None and model_id != model.model_id:
        raise PosbenchError(f"{name}: the direction was measured on {model_id}, not {model.model_id}: "
                            "run `posbench run refusal` on this model first")


def project_out(x: torch.Tensor, r_hat: torch.Tensor) -> torch.Tensor:
    """``x - (x . r̂) r̂`` over the last axis, computed in float64 and returned in x's dtype."""
    r = r_hat.to(device=x.device, dtype=torch.float64)
    xd = x.double()
    return (xd - (xd @ r)[..., None] * r).to(x.dtype)


class DirectionalAblation(ActivationEdit):
    name = "ablate-direction"
    showcase_note = ("seen through the refusal probe's own loop, which fits the direction first: "
                     "posbench run refusal -m M -o conditions=baseline,ablate-direction,add-direction")
    summary = "remove a direction (e.g. the refusal direction) from the residual stream at every layer"
    spec_help = "run=RUN_ID[;store=PATH][;layer=L] | file=DIRECTION.json  e.g. ablate-direction:run=1a2b3c"

    Config = DirectionSourceConfig

    def __init__(self, direction: "torch.Tensor | RefusalDirection", model_id: str | None = None,
                 source: str = "tensor"):
        if hasattr(direction, "per_layer"):  # a RefusalDirection
            model_id = direction.model_id if model_id is None else model_id
            source = f"{direction.meta.get('source', source)}, layer {direction.layer}"
            direction = direction.vector
        self.r_hat = _unit(direction)
        self.model_id = model_id
        self.source = source

    @classmethod
    def from_spec(cls, arg: str) -> "DirectionalAblation":
        return cls(parse_direction_spec(cls, arg)[0])

    def params(self) -> dict[str, Any]:
        import hashlib

        digest = hashlib.sha256(self.r_hat.float().numpy().tobytes()).hexdigest()[:12]
        return {"source": self.source, "d_model": int(self.r_hat.numel()), "digest": digest}

    def validate(self, model) -> None:
        check_width(self.r_hat, model, self.model_id, self.name)

    def edits(self, model) -> list[Edit]:
        r_hat = self.r_hat

        def ablate(x: torch.Tensor, ctx) -> torch.Tensor:
            return project_out(x, r_hat)

        last = (model.n_layers - 1,)
        return [Edit("resid_pre", ablate), Edit("attn_out", ablate), Edit("mlp_out", ablate),
                Edit("resid_post", ablate, layers=last)]
