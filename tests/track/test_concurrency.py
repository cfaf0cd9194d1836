"""Several processes (and threads) on one results database: migrations run once, writers never fail with
"database is locked" (SQLite) and nothing is lost."""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest
from sqlalchemy import text

from ablate.track.db import connect

N_PROCS = 4


def _run_procs(target, args_for, n=N_PROCS, timeout=120):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), barrier, queue)) for i in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout)
    assert [p.exitcode for p in procs] == [0] * n
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors
    return [r[1] for r in results]


def _connect_worker(url, barrier, queue):
    try:
        barrier.wait()
        r = connect(url)
        with r.engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM experiments")).scalar()
        queue.put(("ok", r.migrated))
        r.close()
    except BaseException as e:  # report, never hang the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


def test_migrations_applied_once_when_processes_start_together(db_url):
    migrated = _run_procs(_connect_worker, lambda i: (db_url,))
    assert sorted(migrated) == [False] * (N_PROCS - 1) + [True]
    with connect(db_url) as r, r.engine.connect() as conn:
        assert not r.migrated
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0006"]


ITERS = 10


def _writer(url, wid, barrier, queue):
    try:
        r = connect(url)
        barrier.wait()
        for i in range(ITERS):
            t = r.upsert_trial("exp", f"w{wid}-{i}", {"i": i}, stages=["t0"])
            r.set_trial_status(t.id, "running")
            r.mark_stage_running("t0")  # every writer updates the same row
            r.log_metrics(t.id, [("loss", s, 1.0 / (s + 1)) for s in range(25)])
            r.log_event(f"writer {wid} trial {i}", experiment="exp", trial_id=t.id)
            r.log_final_metrics(t.id, {"eval/loss": float(i)})
            r.set_trial_status(t.id, "completed")
            r.experiment_summary("exp")  # readers interleave with the writers
        queue.put(("ok", wid))
        r.close()
    except BaseException as e:
        queue.put(("error", f"{type(e).__name__}: {e}"))


def test_concurrent_writer_processes(db_url):
    with connect(db_url) as r:
        r.upsert_experiment("exp", "name: exp\n", "h")
        r.upsert_stage("t0", "teacher", {})
    _run_procs(_writer, lambda i: (db_url, i))
    with connect(db_url) as r:
        s = r.experiment_summary("exp")
        assert s.counts["completed"] == N_PROCS * ITERS and len(s.trials) == N_PROCS * ITERS
        assert r.get_stage("t0").attempts == N_PROCS * ITERS
        assert len(r.events("exp", limit=10_000)) == N_PROCS * ITERS
        with r.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM metrics")).scalar() == N_PROCS * ITERS * 26


def test_threads_share_one_records(records):
    records.upsert_experiment("exp", "", "h")
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            for i in range(15):
                t = records.upsert_trial("exp", f"t{w}-{i}", {})
                records.log_metrics(t.id, [("loss", s, float(s)) for s in range(10)])
                records.set_trial_status(t.id, "completed")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert records.experiment_summary("exp").counts["completed"] == 60


@pytest.mark.parametrize("n", [2])
def test_sqlite_short_busy_timeout_still_waits_for_writer(tmp_path, n):
    """A write transaction holding the lock longer than nothing: the other writer waits, then succeeds."""
    url = f"sqlite:///{tmp_path}/b.db"
    a, b = connect(url), connect(url, busy_timeout_s=10)
    try:
        a.upsert_experiment("exp", "", "h")
        done = threading.Event()

        def hold() -> None:
            with a.engine.begin() as conn:  # BEGIN IMMEDIATE: holds the write lock
                conn.execute(text("UPDATE experiments SET spec_hash = 'x'"))
                done.wait(0.5)

        th = threading.Thread(target=hold)
        th.start()
        b.upsert_experiment("exp2", "", "h")  # waits for the lock instead of failing
        done.set()
        th.join()
        assert {e.name for e in b.list_experiments()} == {"exp", "exp2"}
    finally:
        a.close()
        b.close()
