"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture
def write(tmp_path: Path):
    """`write(text, name)`: a dedented spec file in the test's folder (its path)."""

    def _write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return _write
