"""Ray's network exposure: a local Ray reachable from this machine only, and a warning when a cluster is
joined without an auth token.

On Linux a local ``ray.init()`` advertises the machine's network address and its GCS, raylet and worker
servers listen on every interface: anyone on the network could submit jobs to it. Ray binds them to the
node's address, and takes the loopback address as the node's address only where it does not expect to
form a cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read into ``ray_constants.ENABLE_RAY_CLUSTER``);
:func:`loopback_only` sets both for the start of a local Ray. Tested in tests/run/test_exposure.py, which
fails if a Ray upgrade changes this.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["LOCALHOST", "has_auth_token", "loopback_only", "warn_without_token"]

LOCALHOST = "127.0.0.1"
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_only() -> Iterator[None]:
    """While a local Ray starts: its node address is 127.0.0.1, so its servers listen on loopback only
    (the processes it starts keep that; this process's setting is restored afterwards, so a later
    ``--address`` connection advertises the real address again)."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = saved_env


def has_auth_token() -> bool:
    """Whether a Ray auth token is at hand for a client ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token, the places Ray reads), unless $RAY_AUTH_MODE turns token auth off."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return False
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(path).expanduser()] if path else [Path.home() / ".ray" / "auth_token"]
    for p in candidates:
        try:
            if p.is_file() and p.read_text().strip():
                return True
        except OSError:
            continue
    return False


def warn_without_token(address: str) -> bool:
    """Warn (and return True) when ``address`` is joined without an auth token: a cluster that accepts
    this connection accepts jobs, i.e. arbitrary code, from anyone who can reach it."""
    if has_auth_token():
        return False
    log.warning(
        "connecting to the Ray cluster at %s without an auth token: if it accepts this connection it accepts "
        "unauthenticated jobs (arbitrary code) from anyone who can reach it. Start it with token "
        "authentication (`ray get-auth-token --generate`, then `RAY_AUTH_MODE=token ray start --head ...`) "
        "and give this machine the token: RAY_AUTH_TOKEN=<token>, RAY_AUTH_TOKEN_PATH=<file> or "
        "~/.ray/auth_token",
        address,
    )
    return True
