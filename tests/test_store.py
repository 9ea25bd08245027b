"""The results store: round trip, atomic writes, concurrent readers, bad stores."""

import hashlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from posbench.errors import StoreError, StoreNotWritableError
from posbench.probes.sinks import SinkProbe
from posbench.protocols import ProbeResult
from posbench.store import Store


def _result(i: int) -> ProbeResult:
    return ProbeResult(
        probe="sinks",
        model_id="m",
        config={"seq_len": 8, "i": i},
        tables={"t": pd.DataFrame({"layer": [0, 1], "value": [0.5 * i, 1.0]})},
        summary={"x": i},
        model_card={"model_id": "m"},
        metadata={"started_at": f"2026-01-01T00:00:0{i}"},
    )


def test_round_trip_of_a_real_run(tmp_path, tiny_llama):
    store = Store(tmp_path / "r.sqlite")
    result = SinkProbe(n_sequences=2).run(tiny_llama)
    run_id = store.save(result)
    loaded = store.load(run_id)
    assert loaded.summary == result.summary and loaded.config == result.config
    assert loaded.model_card == result.model_card and loaded.data_digest == result.data_digest
    for name, frame in result.tables.items():
        pd.testing.assert_frame_equal(loaded.tables[name], frame)
    assert set(loaded.figures) == set(result.figures)
    runs = store.runs(model="tiny-llama", probe="sinks")
    assert list(runs.run_id) == [run_id]
    assert store.latest("tiny-llama", "sinks", result.config, []) == run_id
    assert store.latest("tiny-llama", "sinks", {**result.config, "seq_len": 3}, []) is None
    pd.testing.assert_frame_equal(store.table(run_id, "head_mass"), result.tables["head_mass"])


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import pandas as pd
    sys.path.insert(0, {tests!r})
    from test_store import _result
    from posbench.store import Store
    store = Store({path!r})
    with store._transaction() as conn:
        store._insert_run(conn, "half-run", _result(7))
        store._insert_table(conn, "half-run", "t", _result(7).tables["t"])
        os.kill(os.getpid(), signal.SIGKILL)  # killed midway, before COMMIT
    """
)


def test_run_killed_midway_leaves_earlier_runs_and_no_half_run(tmp_path):
    path = tmp_path / "r.sqlite"
    store = Store(path)
    first = store.save(_result(1))
    code = KILLED_WRITER.format(tests=str(__import__("pathlib").Path(__file__).parent), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    runs = Store(path).runs()
    assert list(runs.run_id) == [first]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM run_tables WHERE run_id='half-run'").fetchone()[0] == 0
    assert Store(path).load(first).summary == {"x": 1}


SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_store import _result
    from posbench.store import Store
    store = Store({path!r})
    with store._transaction() as conn:
        store._insert_run(conn, "slow-run", _result(2))
        print("writing", flush=True)
        time.sleep(3)
    print("committed", flush=True)
    """
)


def test_reader_reads_while_a_writer_runs(tmp_path):
    path = tmp_path / "r.sqlite"
    first = Store(path).save(_result(1))
    code = SLOW_WRITER.format(tests=str(__import__("pathlib").Path(__file__).parent), path=str(path))
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    t0 = time.monotonic()
    reader = Store(path, readonly=True)
    assert list(reader.runs().run_id) == [first]  # consistent snapshot, no half run
    assert reader.load(first).summary == {"x": 1}
    assert time.monotonic() - t0 < 2, "the reader must not wait for the writer"
    assert writer.stdout.readline().strip() == "committed"
    writer.wait(timeout=10)
    assert set(reader.runs().run_id) == {first, "slow-run"}


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unwritable_and_foreign_stores(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreNotWritableError, match="pass --store"):
        Store(blocker / "results.sqlite")
    with pytest.raises(StoreNotWritableError, match="is a folder"):
        Store(tmp_path)
    foreign = tmp_path / "notes.sqlite"
    foreign.write_text("hello, this is not a database")
    before = _digest(foreign)
    with pytest.raises(StoreError, match="not a posbench results store"):
        Store(foreign)
    assert _digest(foreign) == before
    with pytest.raises(StoreError, match="no results store"):
        Store(tmp_path / "missing.sqlite", readonly=True)


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(StoreNotWritableError):
        Store(folder / "r.sqlite")
