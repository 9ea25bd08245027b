"""Options declared once, on a config dataclass, and validated in one place.

A probe's (or intervention's) ``Config`` is a dataclass whose fields are made with ``option``:
the annotation gives the type, ``option`` the bounds, choices and help (scikit-learn's
``_parameter_constraints`` in spirit). ``coerce`` turns a value from the API, the command line
(text) or the dashboard form into the declared type or raises one clear ``BadOptionError``;
``validate`` does it for every field of a config. The CLI, the Python API and the dashboard all
go through here, so a new probe inherits its validation.

Intervention specs (``--intervention NAME:key=value;key=value``) are parsed here too
(``parse_spec``), against the intervention's own ``Config``, so interventions share one grammar:
integer lists take ranges (``0-3,7``), checked against the declared bounds *before* a range is
expanded (``pairs=0-99999999`` is refused, not allocated). See docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import BadOptionError
from .limits import COUNT_CEILINGS

_MISSING = dataclasses.MISSING

MAX_LIST_ITEMS = 100_000  # elements a list option may expand to (ranges included)
_RANGE = re.compile(r"^\s*([+-]?\d+)\s*-\s*([+-]?\d+)\s*$")


def option(
    default: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[Any] | None = None,
    help: str = "",
    nonempty: bool = False,
    check: Callable[[Any], str | None] | None = None,
    counts: str | None = None,
    form: str | None = None,
) -> Any:
    """A config field with its bounds (inclusive), allowed values and help text.

    For tuple fields, ``min``/``max``/``choices``/``check`` apply to every element and
    ``nonempty`` requires at least one element. ``check(value)`` returns why a (coerced) value
    is unusable, or None. ``counts`` says what an integer option sizes, for the memory estimate
    (``posbench.limits``): ``"sequences"`` (how many sequences run), ``"tokens"`` (tokens per
    sequence) or ``"batch"`` (sequences per forward pass); without a ``max`` such an option gets
    the ceiling ``posbench.limits.COUNT_CEILINGS`` sets for what it counts. ``form`` names what
    one value looks like in help and errors (e.g. ``"LAYER.HEAD"``) instead of its type.
    """
    if counts not in (None, *COUNT_CEILINGS):
        raise ValueError(f"counts must be None or one of {', '.join(COUNT_CEILINGS)}, got {counts!r}")
    meta = {"min": min, "max": max, "choices": tuple(choices) if choices is not None else None, "help": help,
            "nonempty": nonempty, "check": check, "counts": counts, "form": form}
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
    check: Callable[[Any], str | None] | None = None
    counts: str | None = None
    form: str | None = None

    @property
    def type_text(self) -> str:
        base = self.form or {int: "integer", float: "number", bool: "true/false", str: "text"}[self.kind]
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
        ceiling = m.get("max")
        if ceiling is None and m.get("counts"):
            ceiling = COUNT_CEILINGS[m["counts"]]
        out[f.name] = OptionSpec(f.name, kind, is_tuple, optional, default, m.get("min"), ceiling,
                                 m.get("choices"), m.get("help", ""), m.get("nonempty", False), m.get("check"),
                                 m.get("counts"), m.get("form"))
    return out


def _bad(spec: OptionSpec, owner: str, shown: Any, reason: str = "") -> BadOptionError:
    return BadOptionError(f"bad option {spec.name}={_show(shown)} for {owner}: expected {spec.type_text}{reason}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _scalar(value: Any, spec: OptionSpec, owner: str, shown: Any) -> Any:
    kind = spec.kind

    def bad(reason: str = ""):
        return _bad(spec, owner, shown, reason)

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
    if kind is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, numbers.Integral):  # numpy and torch integers too
            value = int(value)
        elif isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise bad()
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad()
        value = float(value)
        if math.isnan(value):
            raise bad(" (got NaN)")
    if kind is str and not isinstance(value, str):
        raise bad()
    if spec.choices is not None and value not in spec.choices:
        raise bad(f" ({value!r} is not one of them)" if spec.is_tuple else "")
    if spec.min is not None and value < spec.min:
        raise bad(f" ({value!r} is below {spec.min:g})" if spec.is_tuple else "")
    if spec.max is not None and value > spec.max:
        raise bad(f" ({value!r} is above {spec.max:g})" if spec.is_tuple else "")
    if spec.check is not None:
        reason = spec.check(value)
        if reason:
            raise bad(f" ({reason})")
    return value


def _list_items(text: str, spec: OptionSpec, owner: str) -> list[Any]:
    """Comma-separated items; integer lists also take ranges ``LOW-HIGH``, whose ends are checked
    against the bounds before the range is expanded."""
    out: list[Any] = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        match = _RANGE.match(item) if spec.kind is int else None
        if match is None:
            out.append(_scalar(item, spec, owner, text))
            continue
        lo, hi = (_scalar(x, spec, owner, text) for x in match.groups())
        if hi < lo:
            raise _bad(spec, owner, text, f" (range {item} runs backwards: write LOW-HIGH, e.g. {hi}-{lo})")
        if len(out) + (hi - lo + 1) > MAX_LIST_ITEMS:
            raise _bad(spec, owner, text, f" (more than {MAX_LIST_ITEMS} values)")
        out.extend(range(lo, hi + 1))
    return out


def coerce(config_cls: type, name: str, value: Any, owner: str = "") -> Any:
    """``value`` (text from a command line or form, or a Python value) as the declared type of
    option ``name``, within its bounds; a ``BadOptionError`` naming the option otherwise."""
    table = specs(config_cls)
    owner = owner or config_cls.__name__
    if name not in table:
        raise BadOptionError(f"unknown option '{name}' for {owner}: it takes {', '.join(table)}")
    spec = table[name]
    shown = value
    blank = isinstance(value, str) and value.strip().lower() in ("none", "")
    if value is None or (blank and spec.optional and not (spec.is_tuple and spec.nonempty and value.strip() == "")):
        if spec.optional:
            return None
        raise _bad(spec, owner, shown)
    if not spec.is_tuple:
        return _scalar(value, spec, owner, shown)
    if isinstance(value, str):
        items = _list_items(value, spec, owner)
    elif isinstance(value, (list, tuple, range)):
        if len(value) > MAX_LIST_ITEMS:
            raise _bad(spec, owner, f"<{len(value)} values>", f" (more than {MAX_LIST_ITEMS} values)")
        items = [_scalar(v, spec, owner, shown) for v in value]
    else:
        items = [_scalar(value, spec, owner, shown)]
    if spec.nonempty and not items:
        raise BadOptionError(f"bad option {name}={_show(shown)} for {owner}: give at least one value ({spec.type_text})")
    return tuple(items)


def validate(config: Any, owner: str = "") -> Any:
    """Every field of a config coerced and checked; returns the (new) config."""
    values = {f.name: coerce(type(config), f.name, getattr(config, f.name), owner) for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **values)


def build(config_cls: type, values: dict[str, Any], owner: str = "") -> Any:
    """A validated ``config_cls`` from keyword values (an unknown key is a ``BadOptionError``)."""
    owner = owner or config_cls.__name__
    known = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise BadOptionError(f"unknown option(s) {', '.join(unknown)} for {owner}: it takes {', '.join(known)}")
    return validate(config_cls(**values), owner)


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


def parse_spec(
    config_cls: type,
    text: str,
    owner: str,
    bare: Callable[[str], dict[str, Any]] | None = None,
    grammar: str = "",
) -> dict[str, Any]:
    """An intervention spec ``key=value;key=value`` into typed, checked options of ``config_cls``.

    A part without ``=`` goes to ``bare(part)``, which returns option values (text is fine: it is
    coerced like the rest), e.g. ``0.25,highest`` for a RoPE band or ``3.1,4.2`` for heads. Keys
    may use ``-`` for ``_``; a key given twice is an error. ``grammar`` is quoted in errors.
    """
    hint = f" ({grammar})" if grammar else ""
    raw: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep:
            items = {key.strip().replace("-", "_"): value}
        elif bare is not None:
            items = bare(part)
        else:
            raise BadOptionError(f"malformed part '{part}' in {owner}: write KEY=VALUE{hint}")
        for k, v in items.items():
            if not k:
                raise BadOptionError(f"malformed part '{part}' in {owner}: a key is missing before '='{hint}")
            if k in raw:
                raise BadOptionError(f"option '{k}' is given twice in {owner}: give it once{hint}")
            raw[k] = v
    return {k: coerce(config_cls, k, v, owner) for k, v in raw.items()}


def help_lines(config_cls: type) -> list[str]:
    """One line per option: name, type and bounds, default, help."""
    lines = []
    for spec in specs(config_cls).values():
        default = ",".join(map(str, spec.default)) if spec.is_tuple else spec.default
        lines.append(f"{spec.name}: {spec.type_text} (default {default}){' - ' + spec.help if spec.help else ''}")
    return lines
