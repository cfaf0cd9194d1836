"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the session's in-process submissions (shut down at the end)."""
    import ray

    from ablate.run.executor import init_ray

    saved = os.environ.pop("RAY_ADDRESS", None)
    if ray.is_initialized():  # pragma: no cover - another plugin started one
        ray.shutdown()
    init_ray(None)
    try:
        yield
    finally:
        ray.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
