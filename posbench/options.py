"""Options declared once, on a config dataclass, and validated in one place.

A probe's (or intervention's) ``Config`` is a dataclass whose fields are made with ``option``:
the annotation gives the type, ``option`` the bounds, choices and help (scikit-learn's
``_parameter_constraints`` in spirit). ``coerce`` turns a value from the API, the command line
(text) or the dashboard form into the declared type or raises one clear ``BadOptionError``;
``validate`` does it for every field of a config. The CLI, the Python API and the dashboard all
go through here, so a new probe inherits its validation.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import BadOptionError

_MISSING = dataclasses.MISSING


def option(
    default: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[Any] | None = None,
    help: str = "",
    nonempty: bool = False,
) -> Any:
    """A config field with its bounds (inclusive), allowed values and help text.

    For tuple fields, ``min``/``max``/``choices`` apply to every element and ``nonempty``
    requires at least one element.
    """
    meta = {"min": min, "max": max, "choices": tuple(choices) if choices is not None else None, "help": help,
            "nonempty": nonempty}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda d=tuple(default): d, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionSpec:
    """What a face needs to show or parse one option."""

    name: str
    kind: type  # int, float, bool or str (the element type for tuples)
    is_tuple: bool
    optional: bool  # None allowed
    default: Any
    min: float | None
    max: float | None
    choices: tuple[Any, ...] | None
    help: str
    nonempty: bool

    @property
    def type_text(self) -> str:
        base = {int: "integer", float: "number", bool: "true/false", str: "text"}[self.kind]
        text = f"comma-separated {base}s" if self.is_tuple else base
        if self.choices:
            text += " from " + "|".join(map(str, self.choices))
        if self.min is not None or self.max is not None:
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            text += f" in [{lo}, {hi}]"
        return text + (" or none" if self.optional else "")


def _unwrap(annotation: Any) -> tuple[type, bool, bool]:
    """(element type, is tuple, optional) of a field annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is tuple:
        return typing.get_args(annotation)[0], True, optional
    return annotation, False, optional


def specs(config_cls: type) -> dict[str, OptionSpec]:
    """The declared options of a config dataclass, by name."""
    hints = typing.get_type_hints(config_cls)
    out = {}
    for f in dataclasses.fields(config_cls):
        kind, is_tuple, optional = _unwrap(hints[f.name])
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)
        m = f.metadata
        out[f.name] = OptionSpec(f.name, kind, is_tuple, optional, default, m.get("min"), m.get("max"),
                                 m.get("choices"), m.get("help", ""), m.get("nonempty", False))
    return out


def _scalar(value: Any, spec: OptionSpec, owner: str, shown: Any) -> Any:
    kind = spec.kind

    def bad(reason: str = ""):
        return BadOptionError(
            f"bad option {spec.name}={shown!r} for {owner}: expected {spec.type_text}{reason}"
        )

    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                value = True
            elif text.lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise bad()
        elif kind is int:
            try:
                value = int(text)
            except ValueError:
                raise bad() from None
        elif kind is float:
            try:
                value = float(text)
            except ValueError:
                raise bad() from None
        else:
            value = text
    if kind is bool and not isinstance(value, bool):
        raise bad()
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise bad()
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if math.isnan(value):
            raise bad(" (got NaN)")
    if kind is str and not isinstance(value, str):
        raise bad()
    if spec.choices is not None and value not in spec.choices:
        raise bad(f" ({value!r} is not one of them)" if spec.is_tuple else "")
    if spec.min is not None and value < spec.min:
        raise bad()
    if spec.max is not None and value > spec.max:
        raise bad()
    return value


def coerce(config_cls: type, name: str, value: Any, owner: str = "") -> Any:
    """``value`` (text from a command line or form, or a Python value) as the declared type of
    option ``name``, within its bounds; a ``BadOptionError`` naming the option otherwise."""
    table = specs(config_cls)
    owner = owner or config_cls.__name__
    if name not in table:
        raise BadOptionError(f"unknown option '{name}' for {owner}: it takes {', '.join(table)}")
    spec = table[name]
    shown = value
    if value is None or (isinstance(value, str) and spec.optional and value.strip().lower() in ("none", "")):
        if spec.optional:
            return None
        raise BadOptionError(f"bad option {name}={shown!r} for {owner}: expected {spec.type_text}")
    if not spec.is_tuple:
        return _scalar(value, spec, owner, shown)
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    out = tuple(_scalar(v, spec, owner, shown) for v in items)
    if spec.nonempty and not out:
        raise BadOptionError(f"bad option {name}={shown!r} for {owner}: give at least one value ({spec.type_text})")
    return out


def validate(config: Any, owner: str = "") -> Any:
    """Every field of a config coerced and checked; returns the (new) config."""
    values = {f.name: coerce(type(config), f.name, getattr(config, f.name), owner) for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **values)


def parse_pairs(config_cls: type, pairs: Sequence[str], owner: str = "") -> dict[str, Any]:
    """``["key=value", ...]`` from a command line into typed, checked options."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise BadOptionError(f"malformed option '{pair}': write KEY=VALUE, e.g. --option seq_len=128")
        out[key] = coerce(config_cls, key, value, owner)
    return out


def help_lines(config_cls: type) -> list[str]:
    """One line per option: name, type and bounds, default, help."""
    lines = []
    for spec in specs(config_cls).values():
        default = ",".join(map(str, spec.default)) if spec.is_tuple else spec.default
        lines.append(f"{spec.name}: {spec.type_text} (default {default}){' - ' + spec.help if spec.help else ''}")
    return lines
