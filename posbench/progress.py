"""Progress for long work: one small wrapper over tqdm.

Where someone watches (a Jupyter kernel or a terminal) progress is on by default and a bar
appears only once the work has taken ``DELAY`` seconds, so quick calls stay quiet. In a notebook
the bar is a widget when ipywidgets is installed (``pip install posbench[notebook]``), else text.
"""

from __future__ import annotations

import sys
from typing import Any

DELAY = 2.0  # seconds of work before a bar shows


def in_notebook() -> bool:
    """True inside a Jupyter kernel."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def default_enabled() -> bool:
    """Progress on by default in a notebook or a terminal, off when output goes to a file or CI."""
    return in_notebook() or sys.stderr.isatty()


def _tqdm():
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401

            from tqdm.notebook import tqdm

            return tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm

    return tqdm


class Progress:
    """``with Progress(total, "sinks on gemma", enabled) as bar: bar.update(n)``; ``enabled=None``
    means ``default_enabled()``."""

    def __init__(self, total: int, desc: str, enabled: bool | None = True, unit: str = "seq"):
        self._bar: Any = None
        if enabled is None:
            enabled = default_enabled()
        if enabled:
            self._bar = _tqdm()(total=total, desc=desc, unit=unit, delay=DELAY)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NO_PROGRESS = Progress(0, "", enabled=False)
