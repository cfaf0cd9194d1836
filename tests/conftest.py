"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray Train's controller polls its workers every 2 s, and each step of its state machine (start, every
# report, finish) waits for a poll: a quarter second makes each Ray Train test ~10 s shorter. Set before
# any Ray starts, so the session's Ray and every `ablate submit` subprocess inherit it; Ray Train passes
# it on to its controllers. The product keeps Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


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


@pytest.fixture
def write(tmp_path: Path):
    """`write(text, name)`: a dedented spec file in the test's folder (its path)."""

    def _write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write
