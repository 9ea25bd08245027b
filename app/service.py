"""Read-only access to stored results for the dashboard."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from posbench.errors import StoreMissingError
from posbench.protocols import ProbeResult, intervention_label
from posbench.store import Store

RUN_COLUMNS = ["run_id", "created_at", "model_id", "probe", "interventions", "data_digest"]


class ResultsService:
    """Everything the dashboard shows, read from the store (never written).

    A store that does not exist yet reads as empty; a damaged or foreign one raises
    ``StoreError``, which the dashboard shows instead of an empty page.
    """

    def __init__(self, store_path: str | Path):
        self.store_path = Path(store_path)
        self._load = lru_cache(maxsize=32)(self._load_uncached)

    def _store(self) -> Store | None:
        try:
            return Store(self.store_path, readonly=True)
        except StoreMissingError:
            return None

    def runs(self, model: str | None = None, probe: str | None = None) -> pd.DataFrame:
        store = self._store()
        if store is None:
            return pd.DataFrame(columns=RUN_COLUMNS)
        frame = store.runs(model=model or None, probe=probe or None)
        frame["interventions"] = frame["interventions"].map(
            lambda ivs: " + ".join(intervention_label(iv) for iv in ivs) if ivs else "none"
        )
        return frame[RUN_COLUMNS]

    def choices(self) -> tuple[list[str], list[str]]:
        frame = self.runs()
        return sorted(frame.model_id.unique()), sorted(frame.probe.unique())

    def result(self, run_id: str) -> ProbeResult:
        return self._load(run_id)

    def _load_uncached(self, run_id: str) -> ProbeResult:
        store = self._store()
        if store is None:
            raise StoreMissingError(f"no results store at {self.store_path}")
        return store.load(run_id)
