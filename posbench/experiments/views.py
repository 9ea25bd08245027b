"""Heatmaps of patching results, pure functions of the tidy table (so a stored result redraws).

The layout follows what varies: layer x head (head sites over all positions), layer x position
(stream sites per position), layer.head x position (head sites per position), or a layer strip.
Colour is the normalised metric on a diverging scale centred at 0 (1 = clean, 0 = corrupted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go


def position_labels(tokens: Sequence[str]) -> list[str]:
    """``"3: Mary"`` per position, the token text made visible (spaces and line breaks)."""
    return [f"{i}: {t.replace(chr(10), '⏎')}" for i, t in enumerate(tokens)]


def patch_heatmap(table: pd.DataFrame, tokens: Sequence[str] | None = None, title: str = "",
                  value: str = "normalised") -> "go.Figure":
    """One site's patching table as a heatmap of ``value`` (``normalised`` or ``metric``)."""
    import plotly.express as px

    t = table.copy()
    by_head, by_pos = t["head"].notna().any(), t["position"].notna().any()
    labels = position_labels(tokens) if tokens is not None else None
    if by_pos:
        t["x"] = [labels[int(p)] if labels is not None else int(p) for p in t["position"]]
        x_title, x_order = "position", (labels if labels is not None else sorted(t["x"].unique()))
    else:
        t["x"] = t["head"].astype("Int64").astype(str) if by_head else "all positions"
        x_title, x_order = ("head" if by_head else ""), None
    if by_head and by_pos:
        t["y"] = [f"L{int(l)}.H{int(h)}" for l, h in zip(t["layer"], t["head"])]
        y_title = "layer.head"
    else:
        t["y"] = t["layer"].astype(int)
        y_title = "layer"
    grid = t.pivot_table(index="y", columns="x", values=value, aggfunc="first", sort=False)
    if x_order is not None:
        grid = grid.reindex(columns=[x for x in x_order if x in grid.columns])
    elif by_head:
        grid = grid.reindex(columns=sorted(grid.columns, key=int))
    fig = px.imshow(grid, aspect="auto", origin="lower", color_continuous_scale="RdBu", color_continuous_midpoint=0.0,
                    labels={"x": x_title, "y": y_title, "color": value}, title=title)
    return fig.update_xaxes(type="category").update_yaxes(type="category")
