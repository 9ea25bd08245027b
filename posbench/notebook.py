"""Jupyter niceties: plotly.js sent once per kernel, figure sets that display as figures.

A result shown in a notebook embeds plotly.js (about 4.7 MB) with its first figure so the
notebook works offline; every later display in the same kernel reuses it, so a notebook holds
plotly.js once however many results it shows.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

_plotlyjs_sent = False


def plotlyjs_mode() -> str:
    """"inline" the first time a display asks in this kernel, "none" afterwards."""
    global _plotlyjs_sent
    if _plotlyjs_sent:
        return "none"
    _plotlyjs_sent = True
    return "inline"


def reset() -> None:
    """Forget that plotly.js was sent (e.g. after clearing every output of a notebook)."""
    global _plotlyjs_sent
    _plotlyjs_sent = False


class FigureSet(dict):
    """A result's figures by name: a dict of plotly figures that displays as the figures."""

    def _repr_html_(self) -> str:
        mode = plotlyjs_mode()
        parts = []
        for i, (name, fig) in enumerate(self.items()):
            parts.append(f"<h4>{html.escape(name)}</h4>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=(mode == "inline" and i == 0)))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"<FigureSet: {', '.join(self) or 'no figures'}>"

    def show(self) -> None:
        for fig in self.values():
            fig.show()


def figure_set(figures: "dict[str, go.Figure]") -> FigureSet:
    return figures if isinstance(figures, FigureSet) else FigureSet(figures)
