"""posbench: a mechanistic-interpretability workbench for position effects in transformer LMs.

    import posbench
    model = posbench.load_model("smollm2-135m-instruct")
    result = posbench.run("sinks", model)          # a ProbeResult: tables, figures, summary
    posbench.Store().save(result)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Sequence

from .errors import PosbenchError

if TYPE_CHECKING:  # pragma: no cover
    from .batch import Batch, position_ids_from_mask
    from .model import HookedModel, load_model
    from .protocols import Intervention, Probe, ProbeResult
    from .store import Store
    from .zoo import ZOO

__version__ = "0.1.0"

# Imported on first use (PEP 562), so that `import posbench` - and `posbench --help` - does not
# pay for torch, transformers and pandas until something needs them.
_LAZY = {
    "Batch": "batch", "position_ids_from_mask": "batch", "HookedModel": "model", "load_model": "model",
    "Intervention": "protocols", "Probe": "protocols", "ProbeResult": "protocols", "Store": "store", "ZOO": "zoo",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)  # a submodule, e.g. posbench.registry
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'posbench' has no attribute '{name}'") from None
    globals()[name] = value
    return value


def run(probe: str, model: HookedModel, data: Any = None, interventions: Sequence[Intervention] = (),
        progress: bool | None = None, **config) -> ProbeResult:
    """Run a registered probe by name: ``posbench.run("sinks", model, seq_len=64)``. Progress
    shows by default in a notebook or a terminal once the work takes a few seconds."""
    from .registry import get_probe

    return get_probe(probe)(**config).run(model, data=data, interventions=interventions, progress=progress)


def compare(*results: ProbeResult):
    """One probe's results on several models side by side (findings, figures on shared axes)."""
    from .comparison import compare as _compare

    return _compare(*results)


def available_probes() -> dict[str, type[Probe]]:
    """Registered probes by name (every module in ``posbench.probes``)."""
    from .registry import probes as _probes

    return _probes()


def available_interventions() -> dict[str, type[Intervention]]:
    """Registered interventions by name (every module in ``posbench.interventions``)."""
    from .registry import interventions as _interventions

    return _interventions()


__all__ = [
    "Batch", "HookedModel", "Intervention", "PosbenchError", "Probe", "ProbeResult", "Store", "ZOO",
    "available_interventions", "available_probes", "compare", "load_model", "position_ids_from_mask", "run",
]
