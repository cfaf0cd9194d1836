"""Leases on stages and trials (ablate.track.leases): one live holder at a time, a dead one is taken over.

On SQLite and PostgreSQL; several processes claim one stage at the same moment and exactly one wins.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from ablate.track.db import Stage, connect
from ablate.track.leases import Leases, holder_alive


@pytest.fixture
def setup(records):
    records.upsert_experiment("exp", "name: exp\n", "h")
    records.upsert_stage("s1", "teacher", {})
    trial = records.upsert_trial("exp", "k1", {}, stages=["s1"])
    return records, trial.id


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.timeout(60)
def test_one_holder_then_the_next(setup):
    records, trial_id = setup
    a, b = Leases(records), Leases(records)
    assert a.claim_stage("s1").state == "claimed"
    held = b.claim_stage("s1")
    assert held.state == "held" and held.owner == a.owner
    assert a.claim_stage("s1").state == "claimed"  # its own claim again: still its
    assert records.get_stage("s1").attempts == 2
    assert a.claim_trial(trial_id).state == "claimed" and b.claim_trial(trial_id).state == "held"
    assert b.others_active(1) and not a.others_active(1)
    records.mark_stage_completed("s1")
    assert b.claim_stage("s1").state == "completed"
    a.release_trial(trial_id)
    assert b.claim_trial(trial_id).state == "claimed"


@pytest.mark.timeout(60)
def test_failed_stage_is_taken_only_when_asked(setup):
    records, _ = setup
    a, b = Leases(records), Leases(records)
    a.claim_stage("s1")
    records.mark_stage_failed("s1", "boom")
    seen = b.claim_stage("s1", take_failed=False)
    assert seen.state == "failed" and seen.error == "boom"
    assert b.claim_stage("s1").state == "claimed"


@pytest.mark.timeout(60)
def test_dead_holder_is_taken_over(setup):
    """A holder whose process is gone (this host), or whose lease ran out (any host), holds nothing."""
    records, trial_id = setup
    now = datetime.now(UTC)
    gone = f"{__import__('socket').gethostname()}:{_dead_pid()}:x"
    assert not holder_alive(gone, now + timedelta(hours=1))
    assert not holder_alive("elsewhere:1:x", now - timedelta(seconds=1))
    assert holder_alive("elsewhere:1:x", now + timedelta(seconds=30))
    for owner, until in ((gone, now + timedelta(hours=1)), ("elsewhere:1:x", now - timedelta(seconds=1))):
        with records._write() as s:
            s.execute(
                update(Stage)
                .where(Stage.hash == "s1")
                .values(status="running", lease_owner=owner, lease_until=until)
            )
        assert Leases(records).claim_stage("s1").state == "claimed"


@pytest.mark.timeout(60)
def test_recovery_and_release_spare_a_live_holder(setup):
    records, trial_id = setup
    live, other = Leases(records), Leases(records)
    live.claim_stage("s1")
    records.set_trial_status(trial_id, "running")
    live.claim_trial(trial_id)
    assert other.recover_interrupted(1) == {"trials": 0, "stages": 0}  # held by a live submission
    assert records.get_stage("s1").status == "running"
    live.renew()
    assert live.release_all() == {"stages": 1, "trials": 1}
    assert records.get_stage("s1").status == "pending"
    assert records.get_trial("exp", "k1").status == "pending"
    assert other.claim_trial(trial_id).state == "claimed"


def _claimer(url, barrier, queue):
    try:
        r = connect(url)
        leases = Leases(r)
        barrier.wait()
        queue.put(("ok", leases.claim_stage("s1").state))
        barrier.wait()  # the winner lives until every claim is in: a dead winner would be taken over
        r.close()
    except BaseException as e:  # report, never hang the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


@pytest.mark.timeout(120)
def test_processes_claiming_at_once_one_wins(setup, db_url):
    ctx = mp.get_context("spawn")
    n = 4
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(db_url, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=90) for _ in procs)
    for p in procs:
        p.join(30)
    assert got == sorted([("ok", "claimed")] + [("ok", "held")] * (n - 1)), got
