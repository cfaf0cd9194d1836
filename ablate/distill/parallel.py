"""Data-parallel and sharded training for `train`: who this process is, and what that changes.

The trainer runs the same code in every worker; this module holds what differs with the strategy:
- `single`: one process, no process group; everything here is a no-op.
- `ddp`: every worker holds the whole student (and teacher); gradients are averaged after backward.
- `fsdp`: FSDP2 (`fully_shard`, per decoder layer, then the root): parameters, gradients and optimizer
  state are sharded over the workers; the teacher is sharded the same way for its forward passes.

Every worker takes its own contiguous slice of each global batch (`Parallel.shard`), so the workers
never see the same sequence in a step and together see exactly the single-process batch. Each worker
scales its micro-batch losses by its own accumulation count and the gradient average over workers
restores the single-process gradient (mean over all micro-batches of the global batch).

Checkpoints are written with torch.distributed.checkpoint (a folder of shards plus the trainer's own
`meta.pt`), so a run can resume on another number of workers, or as one process.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ablate.diskspace import translating_write_errors
from ablate.errors import TrainError

STRATEGIES = ("single", "ddp", "fsdp")
DCP_CHECKPOINT = "checkpoint"  # the folder of a checkpoint written with torch.distributed.checkpoint
DCP_META = "meta.pt"


@dataclass(frozen=True)
class Parallel:
    """This process's place in a trial: strategy, rank and number of workers."""

    strategy: str = "single"
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, strategy: str = "single") -> Parallel:
        """From the initialised process group (Ray Train, torchrun); `single` when there is none."""
        if strategy not in STRATEGIES:
            raise TrainError(f"strategy '{strategy}' is unknown (expected one of {', '.join(STRATEGIES)})")
        initialised = dist.is_available() and dist.is_initialized()
        if strategy == "single":
            if initialised and dist.get_world_size() > 1:
                raise TrainError(
                    f"strategy single runs in one process, but this one is rank {dist.get_rank()} of "
                    f"{dist.get_world_size()}; use ddp or fsdp"
                )
            return cls()
        if not initialised:
            raise TrainError(
                f"strategy {strategy} needs a torch.distributed process group (Ray Train or torchrun starts "
                "one); none is initialised in this process"
            )
        return cls(strategy, dist.get_rank(), dist.get_world_size())

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------------------ data

    def shard(self, batch: Tensor) -> Tensor:
        """This worker's contiguous slice of a global batch (the batch divides by the world size)."""
        if self.world == 1:
            return batch
        if batch.shape[0] % self.world:
            raise TrainError(
                f"a global batch of {batch.shape[0]} sequences does not divide over {self.world} workers"
            )
        per = batch.shape[0] // self.world
        return batch[self.rank * per : (self.rank + 1) * per]

    # ---------------------------------------------------------------------------------------- models

    def wrap_student(self, model: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
        """The module the training loop calls: DDP around it, or the model itself sharded in place."""
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = (
                [device.index if device.index is not None else torch.cuda.current_device()]
                if device.type == "cuda"
                else None
            )
            return DistributedDataParallel(model, device_ids=ids)
        if self.strategy == "fsdp":
            self._shard(model, device, bf16)
        return model

    def wrap_teacher(self, teacher: nn.Module, bf16: bool, device: torch.device | None = None) -> nn.Module:
        """DDP needs nothing for a frozen teacher; FSDP shards it like the student."""
        if self.strategy == "fsdp":
            teacher.requires_grad_(False)
            self._shard(teacher, device, bf16)
        return teacher

    def _shard(self, model: nn.Module, device: torch.device | None, bf16: bool) -> None:
        """FSDP2 per layer and root. Workers may hold the model on the meta device (no weights: built with
        `ablate.distill.models.meta_copy`) as long as rank 0 holds it whole: every worker shards its
        copy, the meta ones get empty shards, and rank 0's weights are broadcast into the shards, so no
        worker but rank 0 ever holds a whole copy."""
        meta = on_meta(model)
        meta_anywhere = bool(self.sum(torch.tensor([float(meta)], device=_collective_device(device)))[0])
        if meta_anywhere and self.is_main and meta:
            raise TrainError(
                "under FSDP rank 0 must hold the whole model; only the other workers may hold it on meta"
            )
        full = (
            model.state_dict() if meta_anywhere and self.is_main else None
        )  # before sharding: whole tensors
        _fully_shard(model, bf16, reshard_after_forward=True)
        if not meta_anywhere:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        target = device or torch.device("cpu")
        if meta:
            model.to_empty(device=target)
        set_model_state_dict(
            model, full or {}, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
        del full
        for buffer in model.buffers():  # non-persistent ones (rotary frequencies) are in no state dict
            dist.broadcast(buffer.data, src=0)

    def no_grad(self):
        """The mode of forward passes that need no graph: FSDP's all-gathered weights must not become
        inference tensors, so sharded models run under no_grad rather than inference_mode."""
        return torch.no_grad() if self.strategy == "fsdp" else torch.inference_mode()

    @contextmanager
    def accumulating(self, model: nn.Module, last: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on all but the last micro-batch of a step (same result, fewer
        collectives)."""
        if self.strategy == "ddp" and not last:
            with model.no_sync():
                yield
            return
        if self.strategy == "fsdp":
            model.set_requires_gradient_sync(last)
        yield

    # ----------------------------------------------------------------------------------- collectives

    def sum(self, values: Tensor) -> Tensor:
        """Sum of `values` over the workers (in place)."""
        if self.world > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def average_gradients(self, module: nn.Module | None) -> None:
        """Average the gradients of a module that neither DDP nor FSDP wraps (the hidden projection)."""
        if module is None or self.world == 1:
            return
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` on every worker."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def on_meta(model: nn.Module) -> bool:
    """Whether the model's weights are on the meta device (built without weights)."""
    return any(p.is_meta for p in model.parameters())


def _collective_device(device: torch.device | None) -> torch.device:
    if device is not None and device.type == "cuda":
        return device
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "gloo"
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def _fully_shard(model: nn.Module, bf16: bool, reshard_after_forward: bool) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs: dict[str, Any] = {"reshard_after_forward": reshard_after_forward}
    if policy is not None:
        kwargs["mp_policy"] = policy
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    for layer in getattr(base, "layers", []):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def grad_norm_value(norm: Tensor) -> Tensor:
    """A gradient norm as a plain tensor (FSDP returns a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def clip_gradient_groups(groups: list[list[Tensor]], max_norm: float | None) -> Tensor:
    """Total gradient norm over groups of parameters, clipped to `max_norm` when given, as a plain tensor.

    For FSDP's sharded student (DTensors) beside a replicated module (the hidden projection's plain
    tensors): one norm call cannot mix the two, so each group's norm is taken alone and combined."""
    norms = []
    for params in groups:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norms.append(grad_norm_value(torch.nn.utils.get_total_norm(grads, foreach=True)).float())
    device = norms[0].device if norms else torch.device("cpu")
    total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms])) if norms else torch.zeros(())
    if max_norm is not None:
        for params in groups:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total


# ------------------------------------------------------------------------------------------- state


def _root(student: nn.Module, projection: nn.Module | None) -> nn.Module:
    """One module over everything the optimizer trains, so its state dicts have stable names
    (`student.…`, `projection.…`) whatever wraps the student."""
    parts: dict[str, nn.Module] = {"student": student}
    if projection is not None:
        parts["projection"] = projection
    return nn.ModuleDict(parts)


def training_state(
    student: nn.Module, projection: nn.Module | None, optimizer: torch.optim.Optimizer, full: bool
) -> dict[str, Any]:
    """Model and optimizer state keyed by parameter names: sharded (for DCP) or full (for one file)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=full, cpu_offload=full)
    model_sd, optim_sd = get_state_dict(_root(student, projection), optimizer, options=options)
    return {"model": model_sd, "optimizer": optim_sd}


def load_training_state(
    student: nn.Module,
    projection: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    full: bool,
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        _root(student, projection),
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=full, strict=True),
    )


def save_sharded(
    out: Path,
    parallel: Parallel,
    student: nn.Module,
    projection: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> None:
    """Write `out/checkpoint/` with torch.distributed.checkpoint, atomically: every worker writes its
    shards into a fresh folder, then rank 0 adds `meta.pt` and swaps it in for the previous one."""
    import torch.distributed.checkpoint as dcp

    final, tmp, old = out / DCP_CHECKPOINT, out / f".{DCP_CHECKPOINT}.tmp", out / f".{DCP_CHECKPOINT}.old"
    if parallel.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    parallel.barrier()
    with translating_write_errors(tmp, f"sharded checkpoint {final}"):
        dcp.save(training_state(student, projection, optimizer, full=False), checkpoint_id=str(tmp))
    parallel.barrier()
    if parallel.is_main:
        with translating_write_errors(tmp, f"sharded checkpoint {final}"):
            torch.save(meta, tmp / DCP_META)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    parallel.barrier()


def load_sharded_meta(out: Path) -> dict[str, Any] | None:
    path = out / DCP_CHECKPOINT / DCP_META
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - say which file and how to get past it
        raise TrainError(
            f"checkpoint {path} cannot be read ({exc}); delete {path.parent} to restart"
        ) from exc


def load_sharded(
    out: Path, student: nn.Module, projection: nn.Module | None, optimizer: torch.optim.Optimizer
) -> None:
    """Load `out/checkpoint/` into this process's (possibly differently sharded) model and optimizer,
    unpickling nothing but DCP's own metadata classes and plain values (ablate.distill.safe_dcp)."""
    import torch.distributed.checkpoint as dcp

    from ablate.distill.safe_dcp import SafeFileSystemReader, SafeLoadPlanner, load_metadata

    folder = out / DCP_CHECKPOINT
    metadata = folder / ".metadata"
    if metadata.is_file():  # checked here first: inside dcp.load a refusal is flattened into a string
        with open(metadata, "rb") as f:
            load_metadata(f, str(metadata))
    state = training_state(student, projection, optimizer, full=False)
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(folder), planner=SafeLoadPlanner())
    except TrainError:
        raise
    except (Exception, dcp.api.CheckpointException) as exc:  # DCP wraps each rank's failure (a BaseException)
        inner = _train_error(exc)
        if inner is not None:
            raise inner from exc
        raise TrainError(
            f"checkpoint {folder} cannot be loaded ({type(exc).__name__}: {str(exc).strip()[:300]}); "
            f"delete {folder} to restart the run"
        ) from exc
    load_training_state(student, projection, optimizer, state, full=False)


def _train_error(exc: BaseException) -> TrainError | None:
    """A TrainError inside DCP's CheckpointException (one per failed rank), if there is one."""
    seen: list[BaseException] = [exc]
    while seen:
        e = seen.pop()
        if isinstance(e, TrainError):
            return e
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            for value in failures.values():
                inner = value[0] if isinstance(value, tuple) else value
                if isinstance(inner, BaseException):
                    seen.append(inner)
        seen += [c for c in (e.__cause__, e.__context__) if c is not None]
    return None


def full_model_state(model: nn.Module, parallel: Parallel) -> dict[str, Tensor] | None:
    """The whole student's weights on CPU, on rank 0 (None elsewhere); a collective under FSDP."""
    if parallel.strategy != "fsdp":
        if not parallel.is_main:
            return None
        inner = model.module if hasattr(model, "module") else model
        return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if parallel.is_main else None
