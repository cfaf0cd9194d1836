"""Which lm-eval tasks a spec or command names, where they live, and whether they can run here.

A task is an lm-eval task, group or tag name (resolved by lm-eval's TaskManager over its own tasks, the
tasks shipped in ablate/benchmarks/tasks, and any local folders named) or a path to a local folder of
task YAMLs (every task defined there). Checked before anything is loaded: an unknown name (with close
matches) and a hub dataset that is not in the local cache while the hub is offline are errors that name
the task and the fix.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ablate.errors import SpecError

SHIPPED_TASKS = Path(__file__).parent / "tasks"
# dataset_path values that read local files (datasets' packaged builders), not the hub
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


@dataclass(frozen=True)
class TaskSet:
    """Task names to run and the folders lm-eval must index to find them."""

    names: tuple[str, ...]
    include_paths: tuple[str, ...]

    def fingerprint(self) -> dict[str, object]:
        return {"tasks": list(self.names), "include": list(self.include_paths)}


def offline() -> bool:
    """The hub is off when either Hugging Face offline switch is set."""
    return any(
        os.environ.get(k, "").lower() in {"1", "true", "yes", "on"}
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@lru_cache(maxsize=8)
def task_manager(include_paths: tuple[str, ...] = (), defaults: bool = True):
    """lm-eval's TaskManager over the shipped tasks and `include_paths`, and with `defaults` over lm-eval's
    own (cached: indexing lm-eval's ~10k task YAMLs takes about 6 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(SHIPPED_TASKS), *include_paths], include_defaults=defaults)


def manager_for(names: tuple[str, ...], include_paths: tuple[str, ...] = ()):
    """The TaskManager to load `names` with: the shipped tasks and `include_paths` alone when every name is
    a plain task defined there (the same entry as in the full index, where those folders take precedence),
    so a benchmark of local tasks skips lm-eval's 6 s index in each process; otherwise the full one (a
    group or tag may gather lm-eval's own tasks)."""
    local = task_manager(include_paths, defaults=False)
    kinds = [local.task_index[n].kind.name if n in local.task_index else None for n in names]
    if names and all(kind in ("TASK", "PY_TASK") for kind in kinds):
        return local
    return task_manager(include_paths)


def _folder_tasks(folder: Path) -> list[str]:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False).all_subtasks


def resolve(tasks: list[str], base_dir: str | None = None, field: str = "eval.tasks") -> TaskSet:
    """Names and include folders for `tasks`; SpecError naming `field` for anything that cannot run."""
    names: list[str] = []
    includes: list[str] = []
    for item in tasks:
        folder = Path(item).expanduser()
        if base_dir and not folder.is_absolute():
            folder = Path(base_dir) / folder
        if ("/" in item or item.startswith(".")) and folder.is_dir():
            found = _folder_tasks(folder)
            if not found:
                raise SpecError(
                    [f"{field}: folder '{item}' defines no lm-eval task (no YAML with a 'task:' key)"]
                )
            includes.append(str(folder.resolve()))
            names.extend(found)
        elif "/" in item:
            raise SpecError(
                [f"{field}: '{item}' is not a folder of task YAMLs; give a task name or an existing folder"]
            )
        else:
            names.append(item)
    manager = manager_for(tuple(dict.fromkeys(names)), tuple(includes))
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, manager.all_tasks, n=4, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `lm_eval ls tasks` lists them"
            raise SpecError([f"{field}: unknown lm-eval task '{name}'{hint}"])
        _check_reachable(manager, name, field)
    return TaskSet(tuple(dict.fromkeys(names)), tuple(includes))


def _hub_datasets(manager, name: str, depth: int = 0) -> list[str]:
    """The hub dataset ids a task (or every task of a group) loads; local and custom ones excluded."""
    entry = manager.task_index.get(name)
    if entry is None or depth > 4:
        return []
    cfg = entry.cfg or {}
    if "task" in cfg and isinstance(cfg.get("task"), list):  # a group: its members
        return [
            d
            for member in cfg["task"]
            if isinstance(member, str)
            for d in _hub_datasets(manager, member, depth + 1)
        ]
    if entry.kind.name == "TAG":
        members = [n for n, e in manager.task_index.items() if name in e.tags]
        return [d for m in members for d in _hub_datasets(manager, m, depth + 1)]
    path = cfg.get("dataset_path")
    if not path or cfg.get("custom_dataset") or path in LOCAL_BUILDERS or Path(str(path)).exists():
        return []
    return [str(path)]


def _in_cache(dataset_id: str) -> bool:
    from datasets import config

    cache = Path(config.HF_DATASETS_CACHE)
    hub = Path(config.HF_CACHE_HOME) / "hub" if hasattr(config, "HF_CACHE_HOME") else None
    folder = dataset_id.replace("/", "___")
    if (cache / folder).is_dir():
        return True
    return bool(hub and (hub / f"datasets--{dataset_id.replace('/', '--')}").is_dir())


def _check_reachable(manager, name: str, field: str) -> None:
    if not offline():
        return
    missing = [d for d in _hub_datasets(manager, name) if not _in_cache(d)]
    if missing:
        raise SpecError(
            [
                f"{field}: task '{name}' needs the Hugging Face dataset {missing[0]}, which is not in the local cache, "
                "and the hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set); download it where the hub is "
                "reachable, or use a local task folder"
            ]
        )
