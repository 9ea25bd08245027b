"""The posbench command line end to end: run, runs, report, import, dashboard start-up, help.
Bad inputs, table-driven, are in test_bad_inputs.py."""

import json
import os
import subprocess
import sys

import pytest

from posbench.cli import main
from posbench.registry import probes
from posbench.store import Store


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "results.sqlite"
    assert main(["run", "sinks", "--model", "tiny-llama", "--store", str(path), "--n", "2", "-q"]) == 0
    return path


def test_run_runs_report(tmp_path, store, capsys):
    assert main(["runs", "--store", str(store)]) == 0
    assert "tiny-llama" in capsys.readouterr().out
    assert main(["run", "sinks", "-m", "tiny-llama", "--store", str(store), "--n", "2", "-q",
                 "--intervention", "ablate-heads:1.0", "--option", "epsilon=0.2"]) == 0
    assert main(["runs", "--store", str(store)]) == 0
    assert "ablate-heads(heads=['1.0'],mode=zero)" in capsys.readouterr().out, "runs shows intervention parameters"
    runs = Store(store).runs()
    assert len(runs) == 2 and runs.iloc[0].interventions == [{"name": "ablate-heads", "params": {"heads": ["1.0"], "mode": "zero"}}]
    assert runs.iloc[0].config["epsilon"] == 0.2

    out = tmp_path / "report"
    assert main(["report", "--model", "tiny-llama", "--store", str(store), "--out", str(out), "-q", "--no-showcase"]) == 0
    page = (out / "index.html").read_text()
    assert page.count("Plotly.newPlot") >= 4
    assert page.count("<script type=\"text/javascript\">/**") == 1, "plotly.js is embedded exactly once"
    assert "cdn.plot.ly" not in page.split("</head>")[1], "the report must open offline"
    machine = json.loads((out / "results.json").read_text())
    assert machine["model"]["n_layers"] == 2 and "sink_rate_natural_pct" in machine["probes"]["sinks"]["summary"]
    assert set(machine["probes"]) == {name for name, cls in probes().items() if cls.reported}
    assert "Offset profiles" in page and "frequency against span" in page
    assert (out / "tables" / "sinks__head_mass.csv").exists()
    assert main(["run", "positional-heads", "-m", "tiny-llama", "--store", str(store), "--n", "3", "-q",
                 "-i", "rope-position-free:0.5,highest"]) == 0
    newest = Store(store).runs().iloc[0]
    assert newest.probe == "positional-heads" and newest.config["n_random"] == 4 and newest.config["n_natural"] == 3
    n_runs = len(Store(store).runs())
    assert main(["report", "--model", "tiny-llama", "--store", str(store), "--out", str(out), "-q", "--no-showcase"]) == 0
    assert len(Store(store).runs()) == n_runs, "a second report reuses the stored run"


def test_unwritable_store_fails_before_running(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "sinks", "--model", "tiny-llama", "--store", str(blocker / "r.sqlite")]) == 2
    assert "pass --store to a writable path" in capsys.readouterr().err


def test_console_script_help_and_usage_errors():
    exe = [sys.executable, "-m", "posbench.cli"]
    done = subprocess.run(exe + ["run", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "sinks" in done.stdout and "ablate-heads" in done.stdout
    done = subprocess.run(exe + ["run", "sinks"], capture_output=True, text=True)
    assert done.returncode == 2 and "--model" in done.stderr
    done = subprocess.run(exe + ["runs", "--store", "/nonexistent/x.sqlite"], capture_output=True, text=True)
    assert done.returncode == 2 and "no results store" in done.stderr


def test_help_and_models_import_nothing_heavy():
    """`posbench --help` and `posbench models` answer at once: no torch, transformers, pandas, plotly."""
    code = (
        "import sys, contextlib, io\n"
        "from posbench.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0 and main(['models']) == 0 and main(['report', '--help']) == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'plotly', 'dash') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_busy_store_keeps_the_result_and_import_stores_it(tmp_path, capsys, monkeypatch):
    import sqlite3

    path = tmp_path / "results.sqlite"
    Store(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer in a long transaction
    monkeypatch.setenv("POSBENCH_STORE_WAIT", "0.2")
    out_json = tmp_path / "run.json"
    code = main(["run", "sinks", "-m", "tiny-llama", "--n", "1", "--seq-len", "8", "--store", str(path), "-q",
                 "--json", str(out_json)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3 and err.startswith("posbench: error: could not write the result") and "posbench import" in err
    bundle = json.loads(out_json.read_text())["recovery_file"]
    assert bundle in err and json.loads(out_json.read_text())["stored"] is False
    holder.execute("ROLLBACK")
    holder.close()
    assert len(Store(path).runs()) == 0
    assert main(["import", bundle, "--store", str(path)]) == 0
    assert "imported run" in capsys.readouterr().out
    assert main(["import", bundle, "--store", str(path)]) == 0
    assert "already in" in capsys.readouterr().out
    runs = Store(path).runs()
    assert len(runs) == 1 and runs.iloc[0].run_id == json.loads(out_json.read_text())["run_id"]


def test_warnings_are_one_line_and_the_run_goes_on(tmp_path, capsys):
    text = tmp_path / "long.txt"
    text.write_text("word " * 900)
    out_json = tmp_path / "run.json"
    code = main(["run", "sinks", "-m", "tiny-llama", "--data", str(text), "--store", str(tmp_path / "r.sqlite"), "-q",
                 "-o", "first_token_test=false", "--json", str(out_json)])
    err = capsys.readouterr().err
    assert code == 0 and json.loads(out_json.read_text())["stored"] is True
    warning = [line for line in err.splitlines() if line.startswith("posbench: warning:")]
    assert len(warning) == 1 and "were cut to 64: raise --seq-len (up to tiny-llama's context, 512)" in warning[0]
    assert "inputs" not in Store(tmp_path / "r.sqlite").runs().iloc[0].config


@pytest.mark.parametrize("host,warns", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                        ("0.0.0.0", True), ("192.168.1.5", True), ("example.org", True)])
def test_dashboard_warns_when_served_beyond_loopback(host, warns, tmp_path, capsys, monkeypatch):
    import posbench.app

    served = {}

    class FakeApp:
        def run(self, **kwargs):
            served.update(kwargs)

    monkeypatch.setattr(posbench.app, "create_app", lambda path: FakeApp())
    assert main(["dashboard", "--host", host, "--store", str(tmp_path / "none.sqlite")]) == 0
    err = capsys.readouterr().err
    assert served["host"] == host
    assert ("no authentication" in err) == warns


def test_dashboard_refuses_a_damaged_store(tmp_path, capsys):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database")
    assert main(["dashboard", "--store", str(bad)]) == 2
    assert "not a posbench results store" in capsys.readouterr().err


def test_model_cards_without_weights_then_from_the_card_cache(tmp_path, monkeypatch, tiny_llama):
    """`models --cards` reads a card from the config and tokenizer (no weights), equal to the
    loaded model's card; the second time from the card cache, importing nothing heavy."""
    from posbench.zoo import zoo_card

    monkeypatch.setenv("POSBENCH_CACHE", str(tmp_path))
    assert zoo_card("tiny-llama").to_dict() == tiny_llama.card.to_dict()
    code = (
        "import sys\n"
        "from posbench.zoo import zoo_card\n"
        "card = zoo_card('tiny-llama')\n"
        "print(card.n_layers, sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "POSBENCH_CACHE": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.strip() == "2 []", done.stdout + done.stderr
