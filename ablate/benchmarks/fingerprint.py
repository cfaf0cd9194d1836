"""What a benchmark stage's hash knows of its task: the content of a local or shipped task's files, or
the lm-eval version for lm-eval's own tasks. Cheap (no lm-eval import), so plans stay fast."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

SHIPPED_TASKS = Path(__file__).parent / "tasks"


def task_folder(task: str, base_dir: str | None = None) -> Path | None:
    """The folder a task entry's files are in: a path (relative to the spec's folder), or a task that
    ships with ablate; None for an lm-eval task name."""
    if "/" in task or task.startswith("."):
        folder = Path(task).expanduser()
        if base_dir and not folder.is_absolute():
            folder = Path(base_dir) / folder
        return folder if folder.is_dir() else None
    shipped = SHIPPED_TASKS / task
    return shipped if shipped.is_dir() else None


def folder_digest(folder: Path) -> str:
    """sha256 over the names and bytes of the folder's files (task YAMLs, data, helpers), sorted."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def task_fingerprint(task: str, base_dir: str | None = None) -> str:
    folder = task_folder(task, base_dir)
    if folder is not None:
        return f"files:{folder_digest(folder)}"
    try:
        return f"lm-eval:{metadata.version('lm_eval')}"
    except metadata.PackageNotFoundError:
        return "lm-eval:not-installed"
