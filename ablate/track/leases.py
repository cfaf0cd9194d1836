"""Leases: at most one live submission runs a given stage or trial.

Two `ablate submit` at once (the same spec twice, or two specs sharing stages) must neither run a stage
twice nor let one submission reset or overwrite what the other is running. A submission therefore claims
each stage (and each trial) it is about to run, in one write transaction that reads the row under a row
lock (PostgreSQL ``SELECT ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already serialises writers), and
takes it only when nobody live holds it. The claim writes ``lease_owner`` (host, pid and a nonce of the
submission) and ``lease_until``; a heartbeat thread pushes ``lease_until`` forward while the submission
lives. A holder is dead when its lease ran out (it stopped renewing: killed, hung, lost host) or, on this
host, as soon as its process is gone, so a crashed submission's work is taken over, never waited on
forever. The others wait: they poll the row until it is completed or failed (see ablate.run.executor).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, update

from ablate.track.db import Records, Stage, Trial, TrialStage

log = logging.getLogger(__name__)

__all__ = ["LEASE_S", "Claim", "Leases", "holder_alive", "new_owner"]

LEASE_S = float(os.environ.get("ABLATE_LEASE_S", "60"))
"""How long a claim stays valid without renewal; the heartbeat renews it every quarter of that."""

ClaimState = Literal["claimed", "held", "completed", "failed"]
INTERRUPTED = "interrupted: the process running it stopped before it finished"


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    """claimed: this submission holds it now; held: another live submission does; completed: done
    already; failed: failed in another submission (only when `take_failed` was False)."""
    owner: str | None = None
    error: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def new_owner() -> str:
    """This submission's identity: host, pid and a nonce (a pid is reused, a nonce is not)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_alive(owner: str | None, until: datetime | None, now: datetime | None = None) -> bool:
    """Whether the submission `owner` still holds a lease running to `until`."""
    if not owner or until is None:
        return False
    until = until.replace(tzinfo=UTC) if until.tzinfo is None else until
    if until < (now or _now()):
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
        return _pid_alive(int(pid))
    return True


class Leases:
    """The claims of one submission on one results database."""

    def __init__(self, records: Records, lease_s: float = LEASE_S) -> None:
        self.records = records
        self.owner = new_owner()
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _until(self) -> datetime:
        return _now() + timedelta(seconds=self.lease_s)

    def _mine_or_dead(self, owner: str | None, until: datetime | None) -> bool:
        return owner == self.owner or not holder_alive(owner, until)

    # ------------------------------------------------------------------ stages
    def claim_stage(self, h: str, *, take_failed: bool = True) -> Claim:
        """Take stage `h` to run it now (status running, one more attempt) unless it is completed or a
        live submission runs it. A failed stage is taken (run again) only with `take_failed`."""
        with self.records._write() as s:
            st = s.scalar(select(Stage).where(Stage.hash == h).with_for_update())
            if st is None:
                raise LookupError(f"no stage {h} in the records")
            if st.status == "completed":
                return Claim("completed")
            if st.status == "running" and not self._mine_or_dead(st.lease_owner, st.lease_until):
                return Claim("held", st.lease_owner)
            if st.status == "failed" and not take_failed:
                return Claim("failed", st.lease_owner, st.error)
            now = _now()
            st.status, st.started_at, st.finished_at, st.error = "running", now, None, None
            st.attempts += 1
            st.host = socket.gethostname()
            st.lease_owner, st.lease_until, st.updated_at = self.owner, self._until(), now
            return Claim("claimed", self.owner)

    def unclaim_stage(self, h: str, status: str = "pending", error: str | None = None) -> bool:
        """Give back a stage this submission holds and did not finish (pending, or cancelled with
        the reason); a stage it does not hold is left alone. True if it held it."""
        with self.records._write() as s:
            n = s.execute(
                update(Stage)
                .where(Stage.hash == h, Stage.lease_owner == self.owner, Stage.status == "running")
                .values(status=status, error=error, lease_owner=None, lease_until=None, updated_at=_now())
            ).rowcount
        return bool(n)

    # ------------------------------------------------------------------ trials
    def claim_trial(self, trial_id: int) -> Claim:
        """Take a trial to record or run it, unless a live submission has it (its status is left to
        the caller: a claimed trial may still wait for its stages, or for its turn on Ray)."""
        with self.records._write() as s:
            t = s.get(Trial, trial_id, with_for_update=True)
            if t is None:
                raise LookupError(f"no trial with id {trial_id} in the records")
            if not self._mine_or_dead(t.lease_owner, t.lease_until):
                return Claim("held", t.lease_owner)
            t.lease_owner, t.lease_until = self.owner, self._until()
            return Claim("claimed", self.owner)

    def release_trial(self, trial_id: int) -> None:
        with self.records._write() as s:
            s.execute(
                update(Trial)
                .where(Trial.id == trial_id, Trial.lease_owner == self.owner)
                .values(lease_owner=None, lease_until=None)
            )

    def others_active(self, experiment_id: int) -> bool:
        """Whether another live submission holds an unfinished trial of the experiment (one that only
        looks at a finished trial for a moment does not count: it writes nothing to MLflow)."""
        with self.records._read() as s:
            rows = s.execute(
                select(Trial.lease_owner, Trial.lease_until).where(
                    Trial.experiment_id == experiment_id,
                    Trial.lease_owner.is_not(None),
                    Trial.lease_owner != self.owner,
                    Trial.status.not_in(("completed", "failed", "cancelled")),
                )
            ).all()
        return any(holder_alive(o, u) for o, u in rows)

    def live_holders(self, experiment_id: int) -> list[str]:
        """The live submissions (or builds) working on the experiment now: the holders of its unfinished
        trials and of its running stages (what `ablate cancel` can stop)."""
        with self.records._read() as s:
            trial_ids = select(Trial.id).where(Trial.experiment_id == experiment_id)
            stage_ids = select(TrialStage.stage_id).where(TrialStage.trial_id.in_(trial_ids))
            rows = s.execute(
                select(Trial.lease_owner, Trial.lease_until).where(
                    Trial.experiment_id == experiment_id,
                    Trial.lease_owner.is_not(None),
                    Trial.status.not_in(("completed", "failed", "cancelled")),
                )
            ).all()
            rows += s.execute(
                select(Stage.lease_owner, Stage.lease_until).where(
                    Stage.status == "running", Stage.lease_owner.is_not(None), Stage.id.in_(stage_ids)
                )
            ).all()
        return sorted({o for o, u in rows if holder_alive(o, u)})

    # ------------------------------------------------------------------ recovery, renewal, release
    def recover_interrupted(self, experiment_id: int) -> dict[str, int]:
        """The experiment's trials and stages marked running whose holder is dead go back to pending
        (error "interrupted"); those a live submission holds are left to it."""
        now = _now()
        with self.records._write() as s:
            trial_ids = select(Trial.id).where(Trial.experiment_id == experiment_id)
            stage_ids = select(TrialStage.stage_id).where(TrialStage.trial_id.in_(trial_ids))
            trials = s.execute(
                select(Trial.id, Trial.lease_owner, Trial.lease_until).where(
                    Trial.experiment_id == experiment_id,
                    or_(Trial.status == "running", Trial.lease_owner.is_not(None)),
                )
            ).all()
            stages = s.execute(
                select(Stage.id, Stage.lease_owner, Stage.lease_until).where(
                    Stage.status == "running", Stage.id.in_(stage_ids)
                )
            ).all()
            dead_trials = [i for i, o, u in trials if not holder_alive(o, u, now)]
            dead_stages = [i for i, o, u in stages if not holder_alive(o, u, now)]
            n_trials = 0
            if dead_trials:
                s.execute(
                    update(Trial).where(Trial.id.in_(dead_trials)).values(lease_owner=None, lease_until=None)
                )
                n_trials = s.execute(
                    update(Trial)
                    .where(Trial.id.in_(dead_trials), Trial.status == "running")
                    .values(status="pending", error=INTERRUPTED, updated_at=now)
                ).rowcount
            if dead_stages:
                s.execute(
                    update(Stage)
                    .where(Stage.id.in_(dead_stages))
                    .values(
                        status="pending",
                        error=INTERRUPTED,
                        lease_owner=None,
                        lease_until=None,
                        updated_at=now,
                    )
                )
        return {"trials": int(n_trials or 0), "stages": len(dead_stages)}

    def renew(self) -> None:
        """Push this submission's leases forward (the heartbeat)."""
        until = self._until()
        with self.records._write() as s:
            for model in (Stage, Trial):
                s.execute(update(model).where(model.lease_owner == self.owner).values(lease_until=until))

    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return

        def beat() -> None:
            while not self._stop.wait(self.lease_s / 4):
                try:
                    self.renew()
                except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                    log.warning("could not renew this submission's leases: %s", exc)

        self._thread = threading.Thread(target=beat, name="ablate-leases", daemon=True)
        self._thread.start()

    def release_all(self, reason: str = INTERRUPTED) -> dict[str, int]:
        """At the end of a submission: stop the heartbeat; stages it still holds running go back to
        pending with `reason`, and its trials are let go (one still running goes back to pending)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        now = _now()
        with self.records._write() as s:
            n_stages = s.execute(
                update(Stage)
                .where(Stage.lease_owner == self.owner, Stage.status == "running")
                .values(status="pending", error=reason, updated_at=now)
            ).rowcount
            n_trials = s.execute(
                update(Trial)
                .where(Trial.lease_owner == self.owner, Trial.status == "running")
                .values(status="pending", error=reason, updated_at=now)
            ).rowcount
            for model in (Stage, Trial):
                s.execute(
                    update(model)
                    .where(model.lease_owner == self.owner)
                    .values(lease_owner=None, lease_until=None)
                )
        return {"stages": int(n_stages or 0), "trials": int(n_trials or 0)}

    def held_stages(self, hashes: Sequence[str]) -> list[str]:
        """Which of `hashes` this submission holds."""
        with self.records._read() as s:
            return list(
                s.scalars(
                    select(Stage.hash).where(Stage.hash.in_(list(hashes)), Stage.lease_owner == self.owner)
                )
            )
