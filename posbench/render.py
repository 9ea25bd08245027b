"""One rendering of a result for every face: Jupyter and the HTML report use ``to_html``; the
dashboard turns the same ``RenderedResult`` into Dash components."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from .protocols import ProbeResult


@dataclass
class RenderedResult:
    probe: str
    title: str
    meta: str
    interventions: str  # "" when none
    summary: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, "go.Figure"] = field(default_factory=dict)
    config: str = ""


def render(result: "ProbeResult") -> RenderedResult:
    md = result.metadata
    meta = (
        f"run {result.run_id} · {md.get('started_at', '')} · {md.get('seconds', '?')} s · "
        f"attention {md.get('attn_implementation')} · weights {md.get('weights')} · data {result.data_digest}"
    )
    return RenderedResult(
        probe=result.probe,
        title=result.title(),
        meta=meta,
        interventions=json.dumps(result.interventions) if result.interventions else "",
        summary=result.summary_frame(),
        tables=result.reading_tables(),
        figures=result.figures,
        config=json.dumps(result.config, indent=1, default=str),
    )


def _escape_frame(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, escape=True) if len(frame) else "<p>none</p>"


def to_html(
    rendered: RenderedResult, plotlyjs: Literal["inline", "none"] = "none", figure_height: int | None = None,
    heading: str = "h3", div_prefix: str | None = None,
) -> str:
    """HTML for a rendered result. ``plotlyjs="inline"`` embeds plotly.js with the first figure
    (a notebook cell that must work offline); the report embeds it once in the page head and
    gives the figures stable ids (``div_prefix``)."""
    h = html.escape
    sub = "h4" if heading == "h3" else "h3"
    parts = [f"<{heading}>{h(rendered.title)}</{heading}>", f'<p class="meta">{h(rendered.meta)}</p>']
    if rendered.interventions:
        parts.append(f"<p><b>Interventions:</b> {h(rendered.interventions)}</p>")
    parts.append(rendered.summary.to_html(index=False, classes="summary", border=0, escape=True))
    for title, frame in rendered.tables.items():
        parts.append(f"<{sub}>{h(title)}</{sub}>")
        parts.append(_escape_frame(frame))
    for i, (name, fig) in enumerate(rendered.figures.items()):
        if figure_height:
            fig.update_layout(template="plotly_white", height=figure_height, margin={"t": 60, "l": 60, "r": 20, "b": 50})
        include = plotlyjs == "inline" and i == 0
        parts.append(f'<div class="figure" data-figure="{h(name)}">')
        div_id = f"{div_prefix}-{name}" if div_prefix else None
        parts.append(fig.to_html(full_html=False, include_plotlyjs=include, div_id=div_id))
        parts.append("</div>")
    parts.append(f"<details><summary>configuration</summary><pre>{h(rendered.config)}</pre></details>")
    return "\n".join(parts)
