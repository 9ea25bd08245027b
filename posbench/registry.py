"""Registries: a new probe, intervention, view or dataset is one new file (or small package).

Every module under ``posbench.probes`` (the repository's ``probes/`` folder, sub-packages
included), ``posbench.interventions`` and ``posbench.data`` is imported, and each Probe,
Intervention, ProbeView or Dataset subclass that names itself is registered under that name.
The registry imports the protocols; the protocols import the registry only inside functions,
so there is no import cycle.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from functools import lru_cache

from .data.base import Dataset
from .errors import PosbenchError, UnknownInterventionError, UnknownProbeError
from .protocols import Intervention, Probe
from .views import ProbeView


@lru_cache(maxsize=None)
def _modules(package_name: str) -> tuple:
    package = importlib.import_module(package_name)
    found = [package]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        found.append(importlib.import_module(info.name))
    return tuple(found)


def _collect(package_name: str, base: type, key: str) -> dict[str, type]:
    found: dict[str, type] = {}
    for module in _modules(package_name):
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, base)
                and obj is not base
                and obj.__module__ == module.__name__
                and isinstance(getattr(obj, key, None), str)
            ):
                name = getattr(obj, key)
                if name in found and found[name] is not obj:
                    raise PosbenchError(f"two {base.__name__}s are named '{name}': {found[name]} and {obj}")
                found[name] = obj
    return dict(sorted(found.items()))


@lru_cache(maxsize=None)
def probes() -> dict[str, type[Probe]]:
    return _collect("posbench.probes", Probe, "name")


@lru_cache(maxsize=None)
def interventions() -> dict[str, type[Intervention]]:
    return _collect("posbench.interventions", Intervention, "name")


@lru_cache(maxsize=None)
def views() -> dict[str, type[ProbeView]]:
    return _collect("posbench.probes", ProbeView, "probe")


@lru_cache(maxsize=None)
def datasets() -> dict[str, type[Dataset]]:
    return _collect("posbench.data", Dataset, "name")


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _lookup(table: dict[str, type], name: str, what: str, error: type[Exception]) -> type:
    if name not in table:
        raise error(f"unknown {what} '{name}': available are {', '.join(table)}.{_suggest(name, table)}")
    return table[name]


def get_probe(name: str) -> type[Probe]:
    return _lookup(probes(), name, "probe", UnknownProbeError)


def get_intervention(name: str) -> type[Intervention]:
    return _lookup(interventions(), name, "intervention", UnknownInterventionError)


def get_view(probe: str) -> type[ProbeView]:
    """The view registered for ``probe`` (a bare view without figures if there is none)."""
    return views().get(probe, ProbeView)


def get_dataset(name: str) -> type[Dataset]:
    return _lookup(datasets(), name, "dataset", PosbenchError)


def parse_intervention(spec: str) -> Intervention:
    """Build an intervention from CLI text ``NAME:ARGS`` (e.g. ``ablate-heads:3.1,4.2``)."""
    name, _, arg = spec.partition(":")
    return get_intervention(name.strip()).from_spec(arg.strip())
