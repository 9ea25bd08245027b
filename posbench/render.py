"""One rendering of a result for every face: Jupyter and the HTML report use ``to_html``; the
dashboard turns the same ``RenderedResult`` into Dash components.

Stored results are untrusted (a store file can come from someone else), so every value reaches
the page as text (docs/reliability.md): ``to_html`` escapes every value, whatever its type,
table cells and column names included (pandas ``escape=True``); element ids are reduced to
``[A-Za-z0-9_-]``; views draw figures from a copy of the result whose strings are HTML-escaped,
because plotly.js renders a subset of HTML in titles, labels, legends and hover text (it shows
``&lt;`` as ``<``); and plotly writes figure JSON with ``<``, ``>`` and ``/`` as ``\\u`` escapes,
so no stored string can close the ``<script>`` that holds it.
"""

from __future__ import annotations

import copy
import html
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

    from .protocols import ProbeResult
    from .views import Finding


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
    finding: "Finding | None" = None
    problems: list[str] = field(default_factory=list)  # what could not be drawn from the stored tables


# what a view raises on tables that are not what it expects (a damaged or hand-made store)
_VIEW_ERRORS = (KeyError, ValueError, TypeError, AttributeError, IndexError)


def render(result: "ProbeResult") -> RenderedResult:
    md = result.metadata
    meta = (
        f"run {result.run_id} · {md.get('started_at', '')} · {md.get('seconds', '?')} s · "
        f"attention {md.get('attn_implementation')} · weights {md.get('weights')} · data {result.data_digest}"
    )
    view, problems = result.view, []
    try:
        tables = view.reading_tables(result)
    except _VIEW_ERRORS as err:
        tables = {}
        problems.append(f"reading tables could not be built from the stored tables ({type(err).__name__}: {err})")
    try:
        figures = view.figures(plotly_safe(result))
    except _VIEW_ERRORS as err:
        figures = {}
        problems.append(f"figures could not be drawn from the stored tables ({type(err).__name__}: {err})")
    try:
        finding = view.finding(result)
    except _VIEW_ERRORS as err:
        finding = None
        problems.append(f"the finding could not be stated from the stored tables ({type(err).__name__}: {err})")
    return RenderedResult(
        finding=finding,
        probe=result.probe,
        title=result.title(),
        meta=meta,
        interventions=json.dumps(result.interventions, default=str) if result.interventions else "",
        summary=result.summary_frame(),
        tables=tables,
        figures=figures,
        config=json.dumps(result.config, indent=1, default=str),
        problems=problems,
    )


def safe_finding(result: "ProbeResult") -> "Finding | None":
    """The result's finding, or None when its stored tables cannot give one."""
    try:
        return result.view.finding(result)
    except _VIEW_ERRORS:
        return None


def _text(value: Any) -> Any:
    """Strings HTML-escaped for plotly's pseudo-HTML (which shows ``&lt;`` as ``<``), through
    lists and dicts; other values unchanged."""
    if isinstance(value, str):
        return html.escape(value, quote=False)
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_text(v) for v in value)
    return value


def _frame_text(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.rename(columns=lambda c: _text(c) if isinstance(c, str) else c)
    for col in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col])):
            out[col] = out[col].map(_text)
    return out


def plotly_safe(result: "ProbeResult") -> "ProbeResult":
    """A copy of ``result`` whose strings (table cells and column names, config, summary, card,
    metadata, interventions) are HTML-escaped: what a view puts in a figure shows as text."""
    safe = copy.copy(result)
    safe.tables = {name: _frame_text(frame) for name, frame in result.tables.items()}
    for attr in ("config", "summary", "model_card", "metadata", "interventions", "model_id", "probe", "data_digest"):
        setattr(safe, attr, _text(getattr(result, attr)))
    return safe


def safe_id(text: str) -> str:
    """An element id made of ``[A-Za-z0-9_-]`` only (ids go into attributes and scripts)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text))


def _escape_frame(frame: pd.DataFrame, classes: str = "reading") -> str:
    """A table as escaped HTML, floats to 4 significant digits, inside a scrolling box."""
    if not len(frame):
        return "<p>none</p>"
    table = frame.to_html(index=False, border=0, escape=True, classes=classes, float_format=lambda x: f"{x:.4g}")
    return f'<div class="table-wrap">{table}</div>'


def finding_html(finding: "Finding | None") -> str:
    """A finding as an escaped paragraph block (empty when there is none)."""
    if finding is None:
        return ""
    h = html.escape
    parts = [f'<div class="finding"><p><b>Finding.</b> {h(" ".join(finding.sentences))}</p>']
    if finding.published:
        parts.append(f"<p><b>Published.</b> {h(finding.published)}</p>")
    if finding.verdict:
        parts.append(f"<p><b>Here.</b> {h(finding.verdict)}</p>")
    parts.append("</div>")
    return "".join(parts)


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
    for problem in rendered.problems:
        parts.append(f'<p class="problem"><b>Not shown:</b> {h(problem)}</p>')
    parts.append(finding_html(rendered.finding))
    parts.append(_escape_frame(rendered.summary.drop(columns="key", errors="ignore"), classes="summary"))
    for title, frame in rendered.tables.items():
        parts.append(f"<{sub}>{h(title)}</{sub}>")
        parts.append(_escape_frame(frame))
    for i, (name, fig) in enumerate(rendered.figures.items()):
        if figure_height:
            fig.update_layout(template="plotly_white", height=figure_height, margin={"t": 60, "l": 60, "r": 20, "b": 50})
        include = plotlyjs == "inline" and i == 0
        parts.append(f'<div class="figure" data-figure="{h(name)}">')
        div_id = safe_id(f"{div_prefix}-{name}") if div_prefix else None
        parts.append(fig.to_html(full_html=False, include_plotlyjs=include, div_id=div_id))
        parts.append("</div>")
    parts.append(f"<details><summary>configuration</summary><pre>{h(rendered.config)}</pre></details>")
    return "\n".join(parts)
