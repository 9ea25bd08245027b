"""Jupyter: the example notebooks execute end to end (nbclient, a real kernel), their outputs are
stripped in git, and a notebook that displays several results holds plotly.js once."""

from pathlib import Path

import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _execute(nb, cwd: Path):
    from nbclient import NotebookClient

    # the kernel inherits this process's environment: the hermetic POSBENCH_STORE, offline flags
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _html_outputs(nb) -> list[str]:
    return [out["data"]["text/html"] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if "text/html" in out.get("data", {})]


def _plotlyjs_copies(nb) -> int:
    from plotly.offline import get_plotlyjs

    signature = get_plotlyjs()[5000:5080]  # a stretch of the minified library
    return sum(html.count(signature) for html in _html_outputs(nb))


def test_notebooks_are_stored_without_outputs():
    assert {p.name for p in NOTEBOOKS} >= {"tour.ipynb", "compare_models.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip its outputs"


def test_two_results_in_one_notebook_hold_plotlyjs_once(tmp_path):
    """Two results and a loaded result's figures displayed in one kernel: one copy of plotly.js."""
    code = [
        "import posbench\nmodel = posbench.load_model('tiny-llama')",
        "a = posbench.run('sinks', model, n_sequences=2, seq_len=16)\na",
        "b = posbench.run('positional-heads', model, n_random=2, n_natural=2, n_repeated=1, seq_len=16)\nb",
        "store = posbench.Store()\nstore.load(store.save(a)).figures",
        "print(repr(a)); print(repr(store)); print(repr(model))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in code])
    _execute(nb, tmp_path)
    outputs = _html_outputs(nb)
    assert len(outputs) == 3 and all("plotly-graph-div" in html for html in outputs)
    assert _plotlyjs_copies(nb) == 1
    text = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
    assert text.startswith("<ProbeResult sinks on tiny-llama run ") and "<Store " in text and "HookedModel('tiny-llama'" in text


@pytest.mark.embedded
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_example_notebook_runs_end_to_end(path, tmp_path):
    nb = _execute(nbformat.read(path, as_version=4), tmp_path)
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert errors == []
    assert _plotlyjs_copies(nb) == 1, "plotly.js once per notebook"
    assert any('class="finding"' in html or "findings" in html for html in _html_outputs(nb))


def test_progress_is_on_by_default_where_someone_watches(monkeypatch):
    import sys

    from posbench import progress

    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress.default_enabled() is False and progress.Progress(3, "x", enabled=None)._bar is None
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    bar = progress.Progress(3, "x", enabled=None)
    try:
        assert bar._bar is not None and bar._bar.delay == progress.DELAY, "on, shown after a few seconds"
        try:
            import ipywidgets  # noqa: F401

            assert type(bar._bar).__module__ == "tqdm.notebook"
        except ImportError:
            assert type(bar._bar).__module__ == "tqdm.std", "text bars without ipywidgets"
    finally:
        bar.close()
