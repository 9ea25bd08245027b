"""The dashboard in a real headless Chromium (dash[testing]'s dash_duo + Debian's chromium)."""

import shutil

import pytest

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs Debian's chromium-driver"),
]


@pytest.fixture
def stored(tmp_path, tiny_llama):
    from posbench.interventions.head_ablation import HeadAblation
    from posbench.probes.sinks import SinkProbe
    from posbench.store import Store

    store = Store(tmp_path / "results.sqlite")
    plain = store.save(SinkProbe(n_sequences=2).run(tiny_llama))
    ablated = store.save(SinkProbe(n_sequences=2).run(tiny_llama, interventions=[HeadAblation([(1, 2)])]))
    return store, plain, ablated


def test_dashboard_lists_runs_and_shows_a_run(dash_duo, stored, tiny_llama):
    from posbench.app import create_app
    from posbench.probes.positional_heads import PositionalHeadsProbe

    store, plain, ablated = stored
    app = create_app(store.path, refresh_ms=500)
    dash_duo.start_server(app)
    dash_duo.wait_for_text_to_equal("#runs tbody tr:nth-child(2) td:nth-child(2)", ablated, timeout=20)
    dash_duo.wait_for_contains_text("#run-title", "sinks on tiny-llama under ablate-heads", timeout=20)
    dash_duo.wait_for_element("#fig-first_token_mass .main-svg", timeout=20)
    assert "ablate-heads" in dash_duo.find_element("#run-interventions").text
    assert "Sink rate" in dash_duo.find_element("#run-finding").text and "Gu et al. 2025" in dash_duo.find_element("#run-finding").text
    # choose the other run (the table re-renders only when the store changes)
    dash_duo.find_elements("#runs tbody input[type=radio]")[1].click()
    dash_duo.wait_for_text_to_equal("#run-title", "sinks on tiny-llama", timeout=20)
    # a writer adds a run while the dashboard is open: it appears on the next refresh
    store.save(PositionalHeadsProbe(n_random=2, n_natural=2, n_repeated=1).run(tiny_llama))
    dash_duo.wait_for_contains_text("#runs", "positional-heads", timeout=20)
    assert dash_duo.get_logs() in ([], None)


def test_dashboard_with_an_empty_store(dash_duo, tmp_path):
    from posbench.app import create_app

    dash_duo.start_server(create_app(tmp_path / "none.sqlite"))
    dash_duo.wait_for_contains_text("#empty", "No runs yet", timeout=20)


def test_dashboard_shows_planted_markup_as_text(dash_duo, tmp_path, tiny_llama):
    """A crafted store (markup in every field, table cells and figure-bound values) runs no
    script in the dashboard: the markup is shown as text."""
    from test_escaping import PAYLOAD, plant

    from posbench.app import create_app
    from posbench.probes.sinks import SinkProbe
    from posbench.store import Store

    store = Store(tmp_path / "crafted.sqlite")
    store.save(plant(SinkProbe(n_sequences=2, seq_len=16).run(tiny_llama)))
    dash_duo.start_server(create_app(store.path))
    dash_duo.wait_for_contains_text("#run-title", "<img src=x", timeout=20)
    dash_duo.wait_for_element("#fig-first_token_or_position .main-svg", timeout=20)
    assert dash_duo.driver.execute_script("return window.__pwned === undefined")
    assert PAYLOAD.split("{{")[0] in dash_duo.find_element("#run-meta").text
    assert "<img" in dash_duo.find_element("#summary").text
    assert not dash_duo.driver.find_elements("css selector", "#run-view img[src='x']"), "no element made from stored text"
    figure_text = dash_duo.find_element("#fig-first_token_or_position").text
    assert "<img src=x" in figure_text, "the legend shows the planted name as text"


def test_dashboard_shows_a_damaged_store_as_an_error(dash_duo, tmp_path):
    from posbench.app import create_app

    bad = tmp_path / "bad.sqlite"
    bad.write_text("this is not a results store")
    dash_duo.start_server(create_app(bad))
    dash_duo.wait_for_contains_text("#store-error", "not a posbench results store", timeout=20)
