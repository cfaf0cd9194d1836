"""The trainer's checkpoints: where they live, what identifies the run they belong to, and how they are
written (atomically) and read back.

One process writes `out_dir/checkpoint.pt` (model, optimizer, schedule position, RNG, data position,
loss history in one file); several workers write `out_dir/checkpoint/` (torch.distributed.checkpoint,
see ablate.distill.parallel). The file layout and the fingerprint's fields are a format: a checkpoint
written by an older ablate must still resume, so change them only with CHECKPOINT_FORMAT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ablate.diskspace import translating_write_errors
from ablate.distill.config import TrainConfig
from ablate.distill.parallel import (
    DCP_CHECKPOINT,
    Parallel,
    load_sharded_meta,
    save_sharded,
    training_state,
)
from ablate.errors import TrainError

CHECKPOINT = "checkpoint.pt"
RESULT = "train_result.json"
CHECKPOINT_FORMAT = 2  # 2: model and optimizer state keyed by parameter name (get_state_dict)
# Fields that do not change the numbers a run produces; a resume may change them.
_NOT_FINGERPRINTED = (
    "checkpoint_every", "device", "precision", "logit_chunk", "activation_checkpointing", "compile",
)  # fmt: skip
# What a checkpoint's weights and optimizer state come from: the (wrapped) student, the kld+intermediate
# projection or None, and the optimizer.
TrainedState = tuple[nn.Module, nn.Module | None, torch.optim.Optimizer]


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file and rename it, so a reader never sees half a file; a full disk is a
    WriteError naming the path and the free bytes."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with translating_write_errors(path, f"checkpoint {path.name}"):
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def _data_digest(batches: Tensor) -> str:
    """Cheap identity of the training split: its shape plus up to 256 of its sequences, evenly spaced
    (works alike for a tensor and a memory-mapped view of token shards, reading only those rows)."""
    n = int(batches.shape[0])
    rows = torch.linspace(0, max(n - 1, 0), min(n, 256)).long().unique()
    sample = batches[rows].to(torch.int64).contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(str(tuple(batches.shape)).encode() + sample).hexdigest()[:16]


def fingerprint(config: TrainConfig, batches: Tensor, student: nn.Module) -> dict[str, Any]:
    """What identifies a run: the config (less what does not change its numbers), the data, the student's size."""
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
    d["data"] = _data_digest(batches)
    d["student_params"] = sum(p.numel() for p in student.parameters())
    return d


def load_checkpoint(out_dir: str | Path) -> dict[str, Any] | None:
    """The latest checkpoint in `out_dir`: the one-file form (weights and optimizer inside), or the
    sharded form's meta (with `sharded: True`; its weights load straight into a model), or None."""
    out = Path(out_dir)
    found: list[dict[str, Any]] = []
    path = out / CHECKPOINT
    if path.is_file():
        try:
            found.append(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # a truncated file cannot happen with atomic writes, but say so if it does
            raise TrainError(
                f"checkpoint {path} cannot be read ({exc}); delete it to restart the run"
            ) from exc
    meta = load_sharded_meta(out)
    if meta is not None:
        found.append({**meta, "sharded": True})
    return max(found, key=lambda c: int(c.get("step", -1))) if found else None


def check_resumable(ckpt: Mapping[str, Any], run_fingerprint: Mapping[str, Any], out: Path) -> None:
    """Refuse a checkpoint of another format or of another run (naming the fields that differ)."""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(
            f"the checkpoint in {out} has format {ckpt.get('format')} (this ablate reads "
            f"{CHECKPOINT_FORMAT}); delete it to restart the run"
        )
    old = ckpt["fingerprint"]
    diff = sorted(k for k in set(old) | set(run_fingerprint) if old.get(k) != run_fingerprint.get(k))
    if diff:
        raise TrainError(
            f"{out} holds a checkpoint of a different run (differs in: {', '.join(diff)}); "
            "use a new output directory, or delete it to start over"
        )


def rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_meta(
    step: int,
    config: TrainConfig,
    run_fingerprint: dict[str, Any],
    parallel: Parallel,
    device: torch.device,
    history: dict[str, list],
) -> dict[str, Any]:
    """Everything a checkpoint holds besides the weights and optimizer state (the format's fields)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "data_position": step * config.global_batch,
        "fingerprint": run_fingerprint,
        "config": config.to_dict(),
        "workers": parallel.world,
        "rng": rng_state(device),
        "history": history,
    }


def save_checkpoint(out: Path, parallel: Parallel, meta: dict[str, Any], trained: TrainedState) -> None:
    """Write the run's state after `meta["step"]` steps, in the form that fits the number of workers; the
    other form, if an earlier attempt left one, is superseded and removed."""
    model, projection, optimizer = trained
    if parallel.distributed:
        save_sharded(out, parallel, model, projection, optimizer, meta)
        if parallel.is_main:
            (out / CHECKPOINT).unlink(missing_ok=True)  # an older one-process checkpoint is superseded
    else:
        state = {**meta, **training_state(model, projection, optimizer, full=True)}
        atomic_write_bytes(out / CHECKPOINT, lambda f: torch.save(state, f))
        shutil.rmtree(out / DCP_CHECKPOINT, ignore_errors=True)
