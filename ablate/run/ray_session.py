"""The Ray a submission runs on: a local one sized to this machine and reachable from it only, or a
cluster by address (with its auth token when one is at hand)."""

from __future__ import annotations

import logging
import os

from ablate.errors import RunError
from ablate.run import raynet
from ablate.run.ray_workers import error_line

log = logging.getLogger(__name__)
OBJECT_STORE_BYTES = 256 * 1024**2  # trials exchange paths, not tensors: keep Ray's shared memory small


def _ray_env() -> None:
    """Process-wide settings for Ray and Tune, before either starts."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # we record results ourselves
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # start/done reports carry no loss
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _token_auth_for_address() -> None:
    """`ray start --head` enables token authentication when a token exists (~/.ray/auth_token,
    $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH), but `ray.init(address=...)` does not, and then retries for
    about 20 s before failing with InvalidAuthToken. With RAY_AUTH_MODE unset and a token at hand, send
    it: a cluster without authentication accepts such a client too."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except Exception as exc:  # noqa: BLE001 - an older or newer Ray without this API: connect as is
        log.debug("token authentication not set up: %s", exc)


def init_ray(address: str | None = None) -> None:
    """Local Ray sized to this machine (dashboard off, object store capped), or a cluster by address
    (`address`, else $RAY_ADDRESS). A no-op when Ray is already initialised in this process."""
    import ray

    if ray.is_initialized():
        return
    _ray_env()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":  # Ray's own word for "start a new local instance"
        address = None
    common = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    try:
        if address:
            raynet.warn_without_token(address)
            _token_auth_for_address()
            ray.init(address=address, **common)
        else:
            # "local": a new Ray of our own even when `ray start` runs on this machine (ray.init() without
            # an address would join the cluster named in /tmp/ray/ray_current_cluster, stale or not);
            # listening on 127.0.0.1 only (raynet.loopback_only).
            with raynet.loopback_only():
                ray.init(
                    address="local", include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, **common
                )
    except ConnectionError as exc:
        raise RunError(
            f"cannot connect to the Ray cluster at {address}: {error_line(exc)}; "
            "check --address / RAY_ADDRESS (and that `ray start --head` is running there)"
        ) from None


__all__ = ["OBJECT_STORE_BYTES", "init_ray"]
