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

from typing import TYPE_CHECKING, Any

import torch

from ..errors import BadOptionError, PosbenchError
from ..protocols import ActivationEdit
from ..sites import Edit

if TYPE_CHECKING:  # pragma: no cover
    from posbench.probes.refusal.direction import RefusalDirection

SOURCE_KEYS = ("run", "store", "file", "layer")


def parse_direction_spec(arg: str, name: str, extra: tuple[str, ...] = ()) -> tuple["RefusalDirection", dict[str, str]]:
    """``run=ID[;store=PATH]`` or ``file=PATH``, plus ``layer=L`` and the ``extra`` keys, into a
    loaded ``RefusalDirection`` (at that layer when given) and the extra options as text."""
    from posbench.probes.refusal.direction import RefusalDirection

    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in arg.split(";"))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in SOURCE_KEYS + extra or not value:
            allowed = ", ".join(f"{k}=" for k in SOURCE_KEYS + extra)
            raise BadOptionError(f"malformed {name} option '{part}': use {allowed} (e.g. {name}:run=RUN_ID)")
        opts[key] = value
    if ("run" in opts) == ("file" in opts):
        raise BadOptionError(f"{name} needs the direction's source: run=RUN_ID (a stored 'refusal' run; "
                             "`posbench runs --probe refusal` lists them) or file=DIRECTION.json")
    layer = None
    if "layer" in opts:
        try:
            layer = int(opts["layer"])
        except ValueError:
            raise BadOptionError(f"{name}: layer must be an integer, got '{opts['layer']}'") from None
    if "run" in opts:
        direction = RefusalDirection.from_store(opts["run"], opts.get("store"), layer=layer)
    else:
        if "store" in opts:
            raise BadOptionError(f"{name}: store= goes with run=, not file=")
        direction = RefusalDirection.load(opts["file"])
        if layer is not None:
            direction.at_layer(layer)
            direction.layer = layer
    return direction, {k: v for k, v in opts.items() if k in extra}


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
    summary = "remove a direction (e.g. the refusal direction) from the residual stream at every layer"
    spec_help = "run=RUN_ID[;store=PATH][;layer=L] | file=DIRECTION.json  e.g. ablate-direction:run=1a2b3c"

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
        direction, _ = parse_direction_spec(arg, cls.name)
        return cls(direction)

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
