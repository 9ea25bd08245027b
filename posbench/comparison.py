"""Several models' results of one probe side by side: the findings in a table and the probe's
comparison figures (``ProbeView.compare``) on shared axes. The report index and Jupyter
(``posbench.compare(a, b)``) show the same comparison."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import pandas as pd

from .render import _VIEW_ERRORS, plotly_safe, safe_finding

if TYPE_CHECKING:  # pragma: no cover
    from .notebook import FigureSet
    from .protocols import ProbeResult


class Comparison:
    """``Comparison(results)``: results of one probe on different models (one per model)."""

    def __init__(self, results: "list[ProbeResult]"):
        if not results:
            raise ValueError("compare needs at least one result")
        probes = {r.probe for r in results}
        if len(probes) != 1:
            raise ValueError(f"compare results of one probe at a time, not {', '.join(sorted(probes))}")
        self.probe = results[0].probe
        self.results = {r.model_id: r for r in results}  # the last result of a model wins
        self.problems: list[str] = []

    def findings(self) -> pd.DataFrame:
        """One row per model: its finding and its verdict against the published result."""
        rows = []
        for model, r in self.results.items():
            f = safe_finding(r)
            rows.append({"model": model, "finding": "" if f is None else " ".join(f.sentences),
                         "against the published result": "" if f is None else f.verdict})
        return pd.DataFrame(rows)

    def published(self) -> str:
        return next((f.published for f in map(safe_finding, self.results.values()) if f is not None and f.published), "")

    @property
    def figures(self) -> "FigureSet":
        """The comparison figures (none for a single model), drawn from escaped copies."""
        from .notebook import figure_set
        from .registry import get_view

        if len(self.results) < 2:
            return figure_set({})
        try:
            return figure_set(get_view(self.probe).compare(
                {html.escape(m, quote=False): plotly_safe(r) for m, r in self.results.items()}))
        except _VIEW_ERRORS as err:
            self.problems.append(f"comparison figures could not be drawn ({type(err).__name__}: {err})")
            return figure_set({})

    def _repr_html_(self) -> str:
        from .render import _escape_frame

        h = html.escape
        parts = [f"<h3>{h(self.probe)} on {h(', '.join(self.results))}</h3>"]
        if self.published():
            parts.append(f'<p><b>Published.</b> {h(self.published())}</p>')
        parts.append(_escape_frame(self.findings(), classes="findings"))
        parts.append(self.figures._repr_html_())
        parts += [f"<p><b>Not shown:</b> {h(p)}</p>" for p in self.problems]
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<Comparison {self.probe}: {', '.join(self.results)}>"


def compare(*results: "ProbeResult") -> Comparison:
    """``posbench.compare(result_a, result_b)``: one probe's results on several models."""
    return Comparison(list(results))
