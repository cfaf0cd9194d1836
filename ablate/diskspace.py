"""Turn a failed write (a full disk above all) into an error that names the path and the free bytes.

A full disk rarely says so by the time it reaches us: torch.save reports `RuntimeError: [enforce fail at
inline_container.cc] . unexpected pos ...` (the OSError(ENOSPC) only in its __context__, or nowhere when
torch writes the file itself), safetensors a SafetensorError quoting "os error 28". `explain` finds the
cause in the exception chain and measures the free space at once, before the caller's cleanup frees the
partial files again.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from ablate.errors import AblateError, WriteError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what torch and safetensors say when the bytes they wrote did not all reach the file
FULL_WORDS = ("no space left", "storagefull", "os error 28", "disk quota exceeded", "os error 122")
WRITE_WORDS = ("unexpected pos", "file write failed", "failed writing file", "error while serializing")

__all__ = ["explain", "free_bytes", "translating_write_errors"]


def free_bytes(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(free, total) bytes of the filesystem holding `path` (or its nearest existing parent)."""
    p = os.path.abspath(os.fspath(path))
    while p and not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return usage.free, usage.total


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint: rank -> (exception, trace)
        if isinstance(failures, dict):
            for value in failures.values():
                inner = value[0] if isinstance(value, tuple) and value else value
                if isinstance(inner, BaseException):
                    todo.append(inner)


def _kind(exc: BaseException) -> str | None:
    """'full' (the disk or quota is full), 'write' (a write failed, cause unknown) or None."""
    found = None
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return "full"
        text = str(e).lower()
        if any(w in text for w in FULL_WORDS):
            return "full"
        if isinstance(e, RuntimeError | OSError) or type(e).__name__ == "SafetensorError":
            if any(w in text for w in WRITE_WORDS):
                found = "write"
    return found


def explain(exc: BaseException, path: str | os.PathLike[str], what: str) -> WriteError | None:
    """A WriteError naming `what` (e.g. "artifact prune-1234"), `path` and the free bytes there when `exc`
    is a failed write; None when it is something else (then re-raise `exc` as it is)."""
    if isinstance(exc, AblateError):
        return None
    kind = _kind(exc)
    if kind is None:
        return None
    space = free_bytes(path)
    free = f"{space[0]:,} bytes free of {space[1]:,}" if space else "free space unknown"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if kind == "full" or (space is not None and space[0] < 64 * 2**20):
        head = f"no space left on device while writing {what} to {path} ({free} on that filesystem"
    else:
        head = f"writing {what} to {path} failed ({free} on that filesystem"
    return WriteError(
        f"{head}; the writer said: {type(exc).__name__}: {first}). Free space there (or point "
        "tracking.artifacts at a larger disk) and run it again: finished stages are kept"
    )


@contextmanager
def translating_write_errors(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Re-raise a failed write inside the block as the WriteError `explain` makes of it."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # torch.distributed.checkpoint raises a BaseException per failed save
        error = explain(exc, path, what)
        if error is None:
            raise
        raise error from exc
