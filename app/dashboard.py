"""Dash layout and callbacks.

Stored values reach the page as text only: Dash components and DataTable cells render strings
as text (no markdown, no raw HTML), cells that are not plain values are shown as their text,
and figures come from ``posbench.render`` (drawn from an HTML-escaped copy of the result).
A damaged or foreign store is shown as an error, not as an empty store.
"""

from __future__ import annotations

import dash
from dash import Input, Output, dash_table, dcc, html

from posbench.errors import StoreError
from posbench.render import render, safe_id

from .service import ResultsService

_ERROR_STYLE = {"color": "#a00", "fontWeight": 600, "margin": "0.5rem 0"}


def _cell(value):
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _table(frame, table_id: str | None = None, page_size: int = 12):
    kwargs = {"id": table_id} if table_id else {}
    frame = frame.rename(columns=str)
    return dash_table.DataTable(
        data=[{k: _cell(v) for k, v in row.items()} for row in frame.to_dict("records")],
        columns=[{"name": c, "id": c} for c in frame.columns],
        page_size=page_size,
        style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "system-ui, sans-serif", "fontSize": 13, "textAlign": "left", "padding": "4px"},
        **kwargs,
    )


def run_view(rendered) -> list:
    """The components of one run: every stored string goes in as text (a component's children
    or a table cell), never as markup."""
    parts = [html.H2(rendered.title, id="run-title"), html.Div(rendered.meta, id="run-meta", style={"color": "#666"})]
    if rendered.interventions:
        parts.append(html.P("Interventions: " + rendered.interventions, id="run-interventions"))
    for problem in rendered.problems:
        parts.append(html.P(f"Not shown: {problem}", style=_ERROR_STYLE))
    finding = rendered.finding
    if finding is not None:
        parts.append(html.Div(id="run-finding", style={"background": "#f3f7fb", "borderLeft": "4px solid #2a6ebb",
                                                       "padding": "0.2rem 0.9rem", "margin": "0.8rem 0"}, children=[
            html.P([html.B("Finding. "), " ".join(finding.sentences)]),
            *([html.P([html.B("Published. "), finding.published])] if finding.published else []),
            *([html.P([html.B("Here. "), finding.verdict])] if finding.verdict else []),
        ]))
    parts.append(html.H3("Summary"))
    parts.append(_table(rendered.summary.drop(columns="key", errors="ignore"), "summary", page_size=40))
    parts.append(html.Details([html.Summary("configuration"), html.Pre(rendered.config, id="run-config")]))
    for title, frame in rendered.tables.items():
        parts.append(html.H3(title))
        parts.append(_table(frame))
    for name, fig in rendered.figures.items():
        parts.append(dcc.Graph(id=f"fig-{safe_id(name)}", figure=fig))
    return parts


def create_app(store_path, refresh_ms: int = 5000) -> dash.Dash:
    """A Dash app over one results store. Runs appear as writers add them (WAL snapshot reads)."""
    service = ResultsService(store_path)
    app = dash.Dash(__name__, title="posbench", suppress_callback_exceptions=True)
    app.layout = html.Div(
        style={"fontFamily": "system-ui, sans-serif", "margin": "1rem 2rem"},
        children=[
            html.H1("posbench", style={"marginBottom": 0}),
            html.Div(f"results store: {service.store_path}", id="store-path", style={"color": "#666"}),
            html.Div(id="store-error", style=_ERROR_STYLE),
            dcc.Interval(id="refresh", interval=refresh_ms),
            html.Div(
                style={"display": "flex", "gap": "1rem", "margin": "1rem 0"},
                children=[
                    dcc.Dropdown(id="model-filter", placeholder="all models", style={"width": "22rem"}),
                    dcc.Dropdown(id="probe-filter", placeholder="all probes", style={"width": "16rem"}),
                ],
            ),
            dash_table.DataTable(
                id="runs",
                columns=[{"name": c, "id": c} for c in
                         ("run_id", "created_at", "model_id", "probe", "interventions", "data_digest")],
                row_selectable="single",
                page_size=10,
                sort_action="native",
                style_cell={"fontFamily": "system-ui, sans-serif", "fontSize": 13, "textAlign": "left"},
            ),
            html.Div(id="run-view", style={"marginTop": "1.5rem"}),
        ],
    )

    @app.callback(
        Output("model-filter", "options"), Output("probe-filter", "options"), Input("refresh", "n_intervals")
    )
    def refresh_choices(_):
        try:
            return service.choices()
        except StoreError:
            return [], []  # the run list shows the error

    @app.callback(
        Output("runs", "data"),
        Output("runs", "selected_rows"),
        Output("store-error", "children"),
        Input("model-filter", "value"),
        Input("probe-filter", "value"),
        Input("refresh", "n_intervals"),
        dash.State("runs", "selected_rows"),
        dash.State("runs", "data"),
    )
    def list_runs(model, probe, _tick, selected, previous):
        try:
            frame = service.runs(model, probe)
        except StoreError as err:
            return [], [], f"Cannot read the results store: {err}"
        records = frame.to_dict("records")
        if previous is not None and records == previous and (selected or not records):
            return dash.no_update, dash.no_update, None  # nothing new: do not re-render the table
        if previous and selected:  # keep the selected run selected across refreshes
            chosen = previous[selected[0]]["run_id"] if selected[0] < len(previous) else None
            ids = [r["run_id"] for r in records]
            return records, [ids.index(chosen)] if chosen in ids else ([0] if records else []), None
        return records, [0] if records else [], None

    @app.callback(Output("run-view", "children"), Input("runs", "selected_rows"), Input("runs", "data"))
    def show_run(selected, rows):
        if not rows or not selected or selected[0] >= len(rows):
            return html.P("No runs yet: `posbench run sinks --model smollm2-135m-instruct` stores one.", id="empty")
        try:
            rendered = render(service.result(rows[selected[0]]["run_id"]))
        except StoreError as err:
            return html.P(f"Cannot show this run: {err}", id="run-error", style=_ERROR_STYLE)
        return run_view(rendered)

    return app
