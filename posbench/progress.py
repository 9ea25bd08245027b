"""Progress for long work: one small wrapper over tqdm (a notebook widget where available)."""

from __future__ import annotations

from typing import Any


class Progress:
    """``with Progress(total, "sinks on gemma", enabled) as bar: bar.update(n)``."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "seq"):
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit)

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
