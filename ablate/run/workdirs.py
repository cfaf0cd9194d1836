"""Where a run of a training stage keeps its resume checkpoints: a work folder of its own, taken over
(renamed) when a dead run left one, so a killed submission resumes instead of starting again."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from ablate.run.artifacts import ArtifactStore

log = logging.getLogger(__name__)

STALE_WORK_S = 600.0  # a work folder of another host untouched this long belongs to a dead run


def store_work_dir(store: ArtifactStore, stage_hash: str, token: str | None = None) -> Path:
    """Where this run of a stage keeps its checkpoints: a folder of its own, `<hash>.<token>` under the
    store's `.work/` (local stores) or the local cache (remote ones), so no other run of the stage can
    write to it or remove it when it publishes. `token` names the run (the submission's
    `host.pid.nonce`; the same for every worker of a trial); without one, this process's.

    A folder a dead run left (a killed submission) is taken over by renaming it, so the run resumes
    from its checkpoint; every worker of a trial may try, one rename wins and the others see its result.
    """
    base = Path(store.root) / ".work" if store.is_local else Path("~/.cache/ablate/work").expanduser()
    base.mkdir(parents=True, exist_ok=True)
    token = token or f"{socket.gethostname()}.{os.getpid()}.{os.urandom(6).hex()}"
    path = base / f"{stage_hash}.{token}"
    left = [p for p in base.glob(f"{stage_hash}*") if p != path and _left_by_dead_run(p, stage_hash)]
    for old in sorted(left, key=_newest_mtime, reverse=True):
        try:
            os.rename(old, path)  # onto a missing or empty folder only: never over a checkpoint
            log.info("resuming %s from the work folder %s", stage_hash, old.name)
            break
        except OSError:
            continue
    path.mkdir(parents=True, exist_ok=True)
    return path


def _newest_mtime(folder: Path) -> float:
    try:
        return max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
    except OSError:
        return 0.0


def _left_by_dead_run(folder: Path, stage_hash: str) -> bool:
    """Whether a work folder of the stage belongs to no live run: one named by a process of this host
    that is gone, one of another host untouched for STALE_WORK_S, or one of an older ablate (no token)."""
    if folder.name == stage_hash:
        return True
    if not folder.name.startswith(stage_hash + "."):
        return False  # another stage whose hash merely starts the same way
    parts = folder.name[len(stage_hash) + 1 :].rsplit(".", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[0] == socket.gethostname():
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - _newest_mtime(folder) > STALE_WORK_S
