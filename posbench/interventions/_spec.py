"""``--intervention NAME:ARGS`` text into typed options, checked by ``posbench.options``.

An intervention declares its options once, as an ``Options`` dataclass of ``option(...)`` fields;
``ARGS`` is ``VALUE`` (the first, positional option) and/or ``key=value`` parts joined by ``;``
(tuple values are comma-separated, e.g. ``layers=0,3``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import BadOptionError
from ..options import coerce, specs, validate


def parse_spec(options_cls: type, arg: str, owner: str, positional: str | None = None) -> dict[str, Any]:
    """``"1000"`` or ``"offset=1000;layers=0,1"`` -> ``{"offset": 1000, "layers": (0, 1)}``."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in arg.split(";"))):
        key, sep, value = part.partition("=")
        if not sep:
            if positional is None or positional in out:
                raise BadOptionError(
                    f"malformed argument '{part}' for {owner}: write KEY=VALUE (options: {', '.join(specs(options_cls))})"
                )
            key, value = positional, part
        key = key.strip().replace("-", "_")
        if key in out:
            raise BadOptionError(f"option '{key}' given twice for {owner}")
        out[key] = coerce(options_cls, key, value, owner)
    return out


def checked(options_cls: type, owner: str, **values: Any) -> Any:
    """An ``options_cls`` instance with every value coerced and bounded (API and CLI alike)."""
    known = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BadOptionError(f"unknown option(s) {', '.join(unknown)} for {owner}: it takes {', '.join(sorted(known))}")
    return validate(options_cls(**values), owner)
