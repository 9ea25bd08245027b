"""Views: how a probe's result is shown, kept beside the probe and found through the registry.

A ``ProbeView`` turns a result's tables into figures (plotly), small reading tables (pandas) and
a finding (a few sentences in numbers with the published result it compares to), all pure
functions of the stored tables and summary. ``labels`` gives the summary keys human names with
units. ``posbench.render`` builds one rendered result from a view, and the report, Jupyter and
the dashboard all show that same rendered result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from .protocols import ProbeResult


@dataclass
class Finding:
    """What one result shows, in numbers (``sentences``), and how it compares with the published
    result it reproduces (``published``: the paper's claim; ``verdict``: "agrees", "differs" or
    "partly" and why, from this result's numbers)."""

    sentences: list[str]
    published: str = ""
    verdict: str = ""
    references: list[str] = field(default_factory=list)

    def text(self) -> str:
        return " ".join([*self.sentences, *(p for p in (self.published, self.verdict) if p)])


def pct(x: float) -> str:
    """A share in [0, 1] as a percentage with one decimal."""
    return f"{100 * float(x):.1f}%"


def verdict(checks: "list[tuple[str, bool]]") -> str:
    """A finding's verdict from (claim, holds) checks against the published result: "Agrees" when
    all hold, "Differs" when none does, else "Partly agrees", followed by the claims; "" if none."""
    if not checks:
        return ""
    word = "Agrees" if all(ok for _, ok in checks) else "Differs" if not any(ok for _, ok in checks) else "Partly agrees"
    return f"{word}: " + "; ".join(text for text, _ in checks) + "."


def humanize(key: str) -> str:
    """A summary key without a declared label: words instead of snake case."""
    return re.sub(r"[_:]+", " ", str(key)).strip()


class ProbeView:
    """Figures, reading tables and the finding of one probe's results. Subclasses set ``probe``."""

    probe: ClassVar[str]
    # (regular expression matched against a whole summary key, its human name with the unit;
    # ``{0}``, ``{1}`` take the expression's groups)
    labels: ClassVar[tuple[tuple[str, str], ...]] = ()

    @classmethod
    def figures(cls, result: "ProbeResult") -> dict[str, "go.Figure"]:
        return {}

    @classmethod
    def reading_tables(cls, result: "ProbeResult") -> dict[str, pd.DataFrame]:
        """Small tables worth reading (the full tables go to CSV and the store)."""
        return {}

    @classmethod
    def finding(cls, result: "ProbeResult") -> Finding | None:
        """The result in a few sentences of numbers, with the published comparison; None if the
        probe states none."""
        return None

    @classmethod
    def compare(cls, results: "dict[str, ProbeResult]") -> dict[str, "go.Figure"]:
        """Figures that put several models' results (by model id) on the same axes, for the report
        index; empty if the probe has none."""
        return {}

    @classmethod
    def metric_label(cls, key: str) -> str:
        """The human name (with unit) of a summary key."""
        for pattern, label in cls.labels:
            m = re.fullmatch(pattern, str(key))
            if m:
                return label.format(*m.groups())
        return humanize(key)
