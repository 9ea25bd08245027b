"""The posbench command line, end to end, and every bad input with its one-line error."""

import hashlib
import json
import subprocess
import sys

import pytest

from posbench.cli import main
from posbench.store import Store


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "results.sqlite"
    assert main(["run", "sinks", "--model", "tiny-llama", "--store", str(path), "--n", "2", "-q"]) == 0
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_runs_report(tmp_path, store, capsys):
    assert main(["runs", "--store", str(store)]) == 0
    assert "tiny-llama" in capsys.readouterr().out
    assert main(["run", "sinks", "-m", "tiny-llama", "--store", str(store), "--n", "2", "-q",
                 "--intervention", "ablate-heads:1.0", "--option", "epsilon=0.2"]) == 0
    runs = Store(store).runs()
    assert len(runs) == 2 and runs.iloc[0].interventions == [{"name": "ablate-heads", "params": {"heads": ["1.0"]}}]
    assert runs.iloc[0].config["epsilon"] == 0.2

    out = tmp_path / "report"
    assert main(["report", "--model", "tiny-llama", "--store", str(store), "--out", str(out), "-q"]) == 0
    page = (out / "index.html").read_text()
    assert page.count("Plotly.newPlot") >= 4
    assert page.count("<script type=\"text/javascript\">/**") == 1, "plotly.js is embedded exactly once"
    assert "cdn.plot.ly" not in page.split("</head>")[1], "the report must open offline"
    machine = json.loads((out / "results.json").read_text())
    assert machine["model"]["n_layers"] == 2 and "sink_rate_natural_pct" in machine["probes"]["sinks"]["summary"]
    assert set(machine["probes"]) == {"sinks", "positional-heads", "rope-usage"}
    assert "Offset profiles" in page and "frequency against span" in page
    assert (out / "tables" / "sinks__head_mass.csv").exists()
    assert main(["run", "positional-heads", "-m", "tiny-llama", "--store", str(store), "--n", "3", "-q",
                 "-i", "rope-position-free:0.5,highest"]) == 0
    newest = Store(store).runs().iloc[0]
    assert newest.probe == "positional-heads" and newest.config["n_random"] == 4 and newest.config["n_natural"] == 3
    n_runs = len(Store(store).runs())
    assert main(["report", "--model", "tiny-llama", "--store", str(store), "--out", str(out), "-q"]) == 0
    assert len(Store(store).runs()) == n_runs, "a second report reuses the stored run"


BAD_INPUTS = [
    (["run", "sinks", "--model", "tiny-lama"], "unknown model 'tiny-lama'"),
    (["run", "sinkz", "--model", "tiny-llama"], "unknown probe 'sinkz'"),
    (["run", "sinks", "--model", "tiny-llama", "--option", "seq_len=abc"], "bad option seq_len='abc' for probe 'sinks': expected integer"),
    (["run", "sinks", "--model", "tiny-llama", "--option", "nope=1"], "unknown option 'nope'"),
    (["run", "sinks", "--model", "tiny-llama", "--option", "epsilon"], "write KEY=VALUE"),
    (["run", "sinks", "--model", "tiny-llama", "--intervention", "ablate-heads:7"], "malformed head '7'"),
    (["run", "sinks", "--model", "tiny-llama", "--intervention", "ablate-heads:1.9"], "head 9 out of range"),
    (["run", "sinks", "--model", "tiny-llama", "--data", "{long}", "--seq-len", "5000"], "context is 512"),
    (["run", "sinks", "--model", "tiny-llama", "--data", "{empty}"], "holds no texts"),
    (["run", "sinks", "--model", "tiny-llama", "--data", "{malformed}"], "malformed.jsonl:2: not valid JSON"),
    (["run", "sinks", "--model", "tiny-llama", "--data", "{notext}"], 'missing field "text"'),
    (["run", "sinks", "--model", "tiny-llama", "--data", "natural,images"], "'images' is not one of them"),
    (["run", "positional-heads", "--model", "tiny-llama", "--data", "natural"], "probe 'positional-heads' takes a .txt"),
    (["run", "rope-usage", "--model", "tiny-gpt2"], "rope-usage needs a RoPE model"),
    (["run", "positional-heads", "--model", "tiny-llama", "--option", "n_random=3"], "n_random must be an even number"),
    (["run", "rope-usage", "--model", "tiny-llama", "-i", "rope-zero-band:pairs=9"], "rotary pair out of range"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS)
def test_bad_input_one_line_error_store_untouched(tmp_path, store, capsys, argv, message):
    files = {
        "long": tmp_path / "long.txt",
        "empty": tmp_path / "empty.txt",
        "malformed": tmp_path / "malformed.jsonl",
        "notext": tmp_path / "notext.jsonl",
    }
    files["long"].write_text("word " * 2000)
    files["empty"].write_text("\n\n")
    files["malformed"].write_text('{"text": "fine"}\n{"text": broken\n')
    files["notext"].write_text('{"body": "x"}\n')
    argv = [a.format(**files) for a in argv] + ["--store", str(store), "-q"]
    before, runs_before = _digest(store), len(Store(store).runs())
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("posbench: error: ") and message in err[-1]
    assert _digest(store) == before and len(Store(store).runs()) == runs_before


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
