"""Probe and intervention registries: a new probe or intervention is one new file.

Every module in ``posbench.probes`` (the repository's ``probes/`` folder) and
``posbench.interventions`` is imported, and each Probe / Intervention subclass with a ``name``
is registered under it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from functools import lru_cache

from .errors import UnknownInterventionError, UnknownProbeError
from .protocols import Intervention, Probe


def _collect(package_name: str, base: type) -> dict[str, type]:
    package = importlib.import_module(package_name)
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package_name}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, base)
                and obj is not base
                and obj.__module__ == module.__name__
                and getattr(obj, "name", None)
            ):
                found[obj.name] = obj
    return dict(sorted(found.items()))


@lru_cache(maxsize=None)
def probes() -> dict[str, type[Probe]]:
    return _collect("posbench.probes", Probe)


@lru_cache(maxsize=None)
def interventions() -> dict[str, type[Intervention]]:
    return _collect("posbench.interventions", Intervention)


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


def parse_intervention(spec: str) -> Intervention:
    """Build an intervention from CLI text ``NAME:ARGS`` (e.g. ``ablate-heads:3.1,4.2``)."""
    name, _, arg = spec.partition(":")
    return get_intervention(name.strip()).from_spec(arg.strip())
