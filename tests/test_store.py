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

from posbench.errors import StoreBusyError, StoreError, StoreNotWritableError
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


# ----------------------------------------------------------------------------- concurrency and recovery
def _open_new_store(path, barrier, queue):
    try:
        barrier.wait(timeout=30)
        store = Store(path)
        queue.put(("ok", len(store.runs())))
    except BaseException as err:  # report everything to the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def test_concurrent_first_use_creates_one_store(tmp_path):
    """Six processes opening one new store at the same instant (2 of 14 trials failed with
    'no such table: meta' when the schema was created statement by statement)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # forked: they start together, no import time
    for trial in range(4):
        path = tmp_path / f"new-{trial}.sqlite"
        barrier, queue = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_new_store, args=(path, barrier, queue)) for _ in range(6)]
        for p in procs:
            p.start()
        outcomes = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert outcomes == [("ok", 0)] * 6, outcomes
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT value FROM meta").fetchall() == [("1",)]
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _hold_write_lock(path):
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_busy_store_result_goes_to_a_recovery_file_and_imports_later(tmp_path):
    path = tmp_path / "r.sqlite"
    first = Store(path).save(_result(1))
    holder = _hold_write_lock(path)  # another writer in a long transaction
    store = Store(path, wait=0.3)
    result = _result(2)
    t0 = time.monotonic()
    with pytest.raises(StoreBusyError, match="posbench import") as caught:
        store.save(result)
    assert 0.3 <= time.monotonic() - t0 < 10, "waits its bounded time, then gives up"
    bundle = caught.value.recovery_path
    assert bundle.parent == tmp_path and bundle.name.endswith(".posbench.zip") and str(bundle) in str(caught.value)
    assert caught.value.result is result
    holder.execute("ROLLBACK")
    holder.close()
    assert list(Store(path).runs().run_id) == [first], "nothing half-written"

    run_id, new = Store(path).import_bundle(bundle)
    assert new and run_id == result.run_id
    loaded = Store(path).load(run_id)
    assert (loaded.config, loaded.summary, loaded.metadata) == (result.config, result.summary, result.metadata)
    pd.testing.assert_frame_equal(loaded.tables["t"], result.tables["t"])
    assert Store(path).import_bundle(bundle) == (run_id, False), "importing twice stores it once"
    assert len(Store(path).runs()) == 2


def test_a_waiting_writer_saves_once_the_lock_is_released(tmp_path):
    import threading

    path = tmp_path / "r.sqlite"
    Store(path)
    holder = _hold_write_lock(path)
    threading.Timer(0.5, lambda: (holder.execute("COMMIT"), holder.close())).start()
    run_id = Store(path, wait=20).save(_result(3))
    assert list(Store(path).runs().run_id) == [run_id]
    assert not list(tmp_path.glob("*.posbench.zip")), "no recovery file when the save succeeded"


def test_store_file_gone_midway_the_result_is_recovered(tmp_path):
    path = tmp_path / "sub" / "r.sqlite"
    store = Store(path)
    for f in path.parent.iterdir():
        f.unlink()
    path.parent.rmdir()
    with pytest.raises(StoreBusyError) as caught:
        store.save(_result(4))
    assert caught.value.recovery_path.exists() and caught.value.recovery_path.parent != path.parent


def test_saving_the_same_result_twice_is_a_no_op(tmp_path):
    store = Store(tmp_path / "r.sqlite")
    result = _result(5)
    assert store.save(result) == store.save(result)
    assert len(store.runs()) == 1
    other = _result(6)
    other.run_id = result.run_id  # a different run that happens to carry the same id
    assert store.save(other) != result.run_id and len(store.runs()) == 2


def test_bad_bundles_are_refused(tmp_path):
    from posbench.bundle import read_bundle, write_bundle
    from posbench.errors import MalformedDataError

    junk = tmp_path / "junk.posbench.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(MalformedDataError, match="not a posbench result bundle"):
        read_bundle(junk)
    with pytest.raises(MalformedDataError, match="is not a file"):
        read_bundle(tmp_path)
    result = _result(7)
    result.run_id = "abc"
    result.summary = ["not", "an", "object"]
    with pytest.raises(MalformedDataError, match="summary is not a JSON object"):
        read_bundle(write_bundle(result, tmp_path))


def test_special_files_and_foreign_databases_are_refused_untouched(tmp_path):
    with pytest.raises(StoreNotWritableError, match="not a regular file"):
        Store("/dev/null")
    with pytest.raises(StoreError, match="not an SQLite file"):
        Store("/proc/self/status")
    foreign = tmp_path / "app.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('owner', 'someone else')")
    conn.close()
    before = _digest(foreign)
    with pytest.raises(StoreError, match="meta table has no schema_version"):
        Store(foreign)
    with pytest.raises(StoreError, match="meta table has no schema_version"):
        Store(foreign, readonly=True)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x)")
    conn.close()
    with pytest.raises(StoreError, match="other tables"):
        Store(other)
    assert _digest(foreign) == before and not list(tmp_path.glob("*-wal"))


def test_damaged_rows_give_a_clear_error(tmp_path):
    path = tmp_path / "r.sqlite"
    store = Store(path)
    run_id = store.save(_result(8))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET summary = '{broken' WHERE run_id = ?", (run_id,))
    conn.close()
    with pytest.raises(StoreError, match=f"run {run_id} .* is damaged"):
        store.load(run_id)
    with pytest.raises(StoreError, match="is damaged"):
        store.runs()


def test_default_store_location(monkeypatch, tmp_path):
    from posbench.store import default_store_path

    monkeypatch.delenv("POSBENCH_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "xdg" / "posbench" / "results.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_path() == tmp_path / ".local" / "share" / "posbench" / "results.sqlite"
    monkeypatch.setenv("POSBENCH_STORE", str(tmp_path / "mine.sqlite"))
    assert default_store_path() == tmp_path / "mine.sqlite"


def test_work_folders_of_killed_dequantizations_are_removed(tmp_path):
    """The model cache, like the store, must not keep what a killed process left half-written."""
    import os

    from posbench.zoo import remove_stale_work_folders

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    killed = tmp_path / f".gemma-3-270m-{dead_pid}-abc"
    live = tmp_path / f".gemma-3-270m-{os.getpid()}-def"
    other = tmp_path / f".smollm2-135m-instruct-{dead_pid}-ghi"
    for folder in (killed, live, other):
        (folder / "checkpoint").mkdir(parents=True)
    assert remove_stale_work_folders(tmp_path, "gemma-3-270m") == [killed]
    assert not killed.exists() and live.exists() and other.exists()
