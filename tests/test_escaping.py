"""Stored data is never trusted as markup: markup planted in every stored field (config, summary,
card, metadata, interventions, digest, table cells, column and table names, values that reach
figure titles, legends and axes) shows as text in the report, in Jupyter and in the dashboard."""

import copy
import json
import re

import pandas as pd
import pytest

from posbench.probes.sinks import SinkProbe
from posbench.render import plotly_safe, render, to_html
from posbench.report import write_report
from posbench.store import Store

PAYLOAD = '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=2</script>{{plotlyjs}}\'&'
RAW = ("<img src=x", "<script>window.__pwned", "</script><script>")  # what must never appear as markup
SHOWN = "&lt;img src=x onerror="  # the escaped text that must appear instead


def plant(result):
    """Markup in every stored field of a real sinks result."""
    result.config = {**{k: PAYLOAD for k in result.config}, PAYLOAD: PAYLOAD}
    result.summary = {PAYLOAD: PAYLOAD, "listed": [PAYLOAD, 1], "nested": {PAYLOAD: PAYLOAD}, "number": 0.5}
    result.model_card = {**result.model_card, "model_id": PAYLOAD, PAYLOAD: [PAYLOAD]}
    result.metadata = {**{k: PAYLOAD for k in result.metadata}, "seconds": {PAYLOAD: PAYLOAD}}
    result.interventions = [{"name": PAYLOAD, "params": {PAYLOAD: PAYLOAD, "heads": [PAYLOAD]}}]
    result.model_id = result.data_digest = PAYLOAD
    tables = {}
    for name, frame in result.tables.items():
        frame = frame.copy()
        for col in ("input", "variant"):  # category values that views put in titles, legends and axes
            if col in frame:  # one category renamed, so categories stay distinct
                frame[col] = frame[col].replace({frame[col].iloc[0]: PAYLOAD})
        frame[PAYLOAD] = PAYLOAD
        tables[name] = frame
    tables[PAYLOAD] = pd.DataFrame({PAYLOAD: [PAYLOAD]})
    tables["../../outside"] = pd.DataFrame({"x": [1]})
    result.tables = tables
    return result


@pytest.fixture(scope="module")
def planted(tiny_llama, tmp_path_factory):
    """The planted result after a round trip through the store (what a crafted store file holds)."""
    result = plant(SinkProbe(n_sequences=2, seq_len=16).run(tiny_llama))
    store = Store(tmp_path_factory.mktemp("crafted") / "results.sqlite")
    return store.load(store.save(result)), store


def strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from strings(v)


def assert_text_only(page: str):
    for raw in RAW:
        assert raw not in page, f"stored markup reached the page as markup: {raw!r}"
    assert SHOWN in page, "the planted values must be shown (as text), not dropped"


def test_stored_fields_are_planted_and_survive_the_store(planted):
    loaded, _ = planted
    assert loaded.summary[PAYLOAD] == PAYLOAD and loaded.metadata["started_at"] == PAYLOAD
    assert loaded.tables["head_mass"]["input"].iloc[0] == PAYLOAD and PAYLOAD in loaded.tables


def test_figures_show_planted_values_as_text(planted):
    loaded, _ = planted
    rendered = render(loaded)
    assert set(rendered.figures) == set(loaded.view.figures(loaded)), "every figure is still drawn"
    seen = False
    for name, fig in rendered.figures.items():
        for text in strings(fig.to_plotly_json()):
            assert "<img" not in text and "<script" not in text, (name, text[:80])
            seen |= "&lt;img" in text
        # plotly writes <, > and / inside its JSON as \u escapes: nothing can close the script tag
        assert "</script>" not in fig.to_json()
    assert seen, "planted table values reach figure titles, legends or axes (escaped)"


def test_report_and_jupyter_render_every_value_as_text(planted, tiny_llama, tmp_path):
    loaded, _ = planted
    rendered = render(loaded)
    for page in (to_html(rendered), to_html(rendered, plotlyjs="inline"), loaded._repr_html_()):
        assert_text_only(page)
    out = tmp_path / "report"
    index = write_report(tiny_llama.card, [loaded], out)
    page = index.read_text()
    assert_text_only(page)
    # one <script> for plotly.js in the head and one per figure: no stored value added any
    assert page.count("<script") == 1 + len(rendered.figures)
    assert page.count("{{plotlyjs}}") >= 1, "a stored '{{plotlyjs}}' stays text"
    assert page.count("Plotly.newPlot") == len(rendered.figures)
    for element_id in re.findall(r'\bid="([^"]*)"', page):
        assert re.fullmatch(r"[A-Za-z0-9_-]+", element_id), element_id
    written = {p.resolve() for p in out.rglob("*") if p.is_file()}
    assert all(out.resolve() in p.parents for p in written), "a table name cannot write outside the report"
    assert not (tmp_path / "outside.csv").exists()
    machine = json.loads((out / "results.json").read_text())
    assert machine["probes"]["sinks"]["summary"][PAYLOAD] == PAYLOAD  # the data itself is kept as it was


def test_dashboard_components_carry_values_as_text(planted):
    from dash import dash_table, dcc, html

    from posbench.app.dashboard import run_view

    loaded, _ = planted
    parts = run_view(render(loaded))

    def walk(component):
        yield component
        children = getattr(component, "children", None)
        for child in children if isinstance(children, (list, tuple)) else [children]:
            if hasattr(child, "to_plotly_json"):
                yield from walk(child)

    shown = []
    for part in parts:
        for c in walk(part):
            assert not isinstance(c, dcc.Markdown) and not getattr(c, "dangerously_allow_html", False)
            if isinstance(getattr(c, "children", None), str):
                shown.append(c.children)
            if isinstance(c, dash_table.DataTable):
                assert all("presentation" not in col for col in c.columns), "cells are plain text"
                for row in c.data:
                    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in row.values())
                shown.extend(str(v) for row in c.data for v in row.values())
            if isinstance(c, dcc.Graph):
                assert not any("<img" in t for t in strings(c.figure.to_plotly_json()))
    assert any(PAYLOAD in s for s in shown), "Dash renders these strings as text (React escapes them)"


def test_plotly_safe_keeps_numbers_and_the_original(planted):
    loaded, _ = planted
    safe = plotly_safe(loaded)
    assert safe.tables["head_mass"]["mean_mass"].equals(loaded.tables["head_mass"]["mean_mass"])
    assert safe.tables["head_mass"]["input"].iloc[0].startswith("&lt;img")
    assert loaded.tables["head_mass"]["input"].iloc[0] == PAYLOAD, "the result itself is not changed"


def test_damaged_tables_are_reported_not_raised(planted):
    loaded, _ = planted
    broken = copy.copy(loaded)
    broken.tables = {"head_mass": pd.DataFrame({"unexpected": [PAYLOAD]})}
    rendered = render(broken)
    assert rendered.figures == {} and rendered.problems
    assert_text_only(to_html(rendered))


def test_comparison_index_renders_every_value_as_text(planted, tiny_llama, tmp_path):
    """Two crafted results (markup in the model id, summary, tables) in the comparison index and
    in the interventions section: text, never markup."""
    from posbench.card import ModelCard
    from posbench.report import ModelReport, write_index

    loaded, _ = planted
    other = copy.copy(loaded)
    other.model_id = PAYLOAD + "2"
    card = ModelCard.from_dict({**tiny_llama.card.to_dict(), "model_id": PAYLOAD})
    pages = [write_report(card, [r], tmp_path / name, intervened=[r]) for name, r in (("a", loaded), ("b", other))]
    index = write_index([ModelReport(card, [r], p) for r, p in zip((loaded, other), pages)], tmp_path)
    for page in (index, *pages):
        text = page.read_text()
        assert not any(raw in text for raw in RAW) and SHOWN in text, page
