"""Views: how a probe's result is shown, kept beside the probe and found through the registry.

A ``ProbeView`` turns a result's tables into figures (plotly) and small reading tables (pandas),
as pure functions of the stored tables. ``posbench.render`` builds one rendered result from a
view, and the report, Jupyter and the dashboard all show that same rendered result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from .protocols import ProbeResult


class ProbeView:
    """Figures and reading tables of one probe's results. Subclasses set ``probe``."""

    probe: ClassVar[str]

    @classmethod
    def figures(cls, result: "ProbeResult") -> dict[str, "go.Figure"]:
        return {}

    @classmethod
    def reading_tables(cls, result: "ProbeResult") -> dict[str, pd.DataFrame]:
        """Small tables worth reading (the full tables go to CSV and the store)."""
        return {}
