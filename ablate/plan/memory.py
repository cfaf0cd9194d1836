"""Per-device memory of a distillation trial, and the fewest GPUs that hold it, from shapes alone.

Assumptions (stated in every estimate, since they move the answer a lot):
- student trained in mixed precision with fp32 master weights: 4 (weights) + 4 (gradients) + 8 (AdamW
  moments) = 16 bytes per parameter; FSDP shards all three over the workers, DDP replicates them;
- teacher held for forward passes only, in bf16 (2 bytes per parameter), sharded like the student;
- activations per device at the micro-batch, bf16, fused (flash) attention, no activation checkpointing:
  34 x seq x micro_batch x hidden bytes per layer (Korthikanti et al. 2022, without the quadratic
  attention term); with checkpointing only each layer's input is kept (2 x seq x micro x hidden) plus
  one layer's full activations;
- logits: the student's at 14 bytes per logit (bf16 output, fp32 upcast, log-softmax, gradient), the
  teacher's at 10 (bf16 output, fp32 upcast, softmax); not sharded by FSDP;
- 10% of the device kept free for the CUDA context, allocator fragmentation and communication buffers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GIB = 1024**3
# Memory a program can allocate on each card (nvidia-smi totals), in bytes.
GPUS: dict[str, float] = {
    "h100-80gb": 81559 * 1024**2,
    "h200-141gb": 143771 * 1024**2,
    "a100-80gb": 81920 * 1024**2,
}
USABLE = 0.9
STUDENT_STATE_BYTES = 16
TEACHER_BYTES = 2
ACTIVATION_BYTES = 34
STUDENT_LOGIT_BYTES = 14
TEACHER_LOGIT_BYTES = 10


@dataclass
class MemoryEstimate:
    gpu: str
    device_bytes: float
    usable_bytes: float
    workers: int
    strategy: str
    student_params: int
    teacher_params: int
    student_state_bytes: float  # per device
    teacher_bytes: float  # per device
    activation_bytes: float  # per device
    activation_bytes_checkpointed: float
    logits_bytes: float
    total_bytes: float
    fits: bool
    min_gpus_fsdp: int | None  # fewest FSDP workers that fit (None: activations alone do not fit)
    min_gpus_fsdp_checkpointed: int | None
    arithmetic: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)


def _min_workers(sharded: float, unsharded: float, usable: float) -> int | None:
    room = usable - unsharded
    return None if room <= 0 else max(1, math.ceil(sharded / room))


def estimate_memory(
    *,
    student_params: int,
    teacher_params: int,
    layers: int,
    hidden: int,
    vocab: int,
    seq_len: int,
    micro_batch: int,
    needs_teacher: bool,
    workers: int,
    strategy: str,
    gpu: str = "h100-80gb",
) -> MemoryEstimate:
    device = GPUS[gpu]
    usable = USABLE * device
    tokens = seq_len * micro_batch
    state = STUDENT_STATE_BYTES * student_params
    teacher = TEACHER_BYTES * teacher_params if needs_teacher else 0.0
    acts = ACTIVATION_BYTES * tokens * hidden * layers
    acts_ckpt = 2 * tokens * hidden * layers + ACTIVATION_BYTES * tokens * hidden
    logits = STUDENT_LOGIT_BYTES * tokens * vocab + (
        TEACHER_LOGIT_BYTES * tokens * vocab if needs_teacher else 0
    )
    shards = workers if strategy == "fsdp" else 1
    total = (state + teacher) / shards + acts + logits
    arithmetic = {
        "student_state": f"{STUDENT_STATE_BYTES} B x {student_params:,} params / {shards} = {state / shards / GIB:.1f} GiB",
        "teacher": f"{TEACHER_BYTES} B x {teacher_params:,} params / {shards} = {teacher / shards / GIB:.1f} GiB"
        if needs_teacher
        else "0 (the loss needs no teacher)",
        "activations": f"{ACTIVATION_BYTES} B x {seq_len} seq x {micro_batch} micro x {hidden} hidden x {layers} layers "
        f"= {acts / GIB:.1f} GiB",
        "logits": f"({STUDENT_LOGIT_BYTES}{' + ' + str(TEACHER_LOGIT_BYTES) if needs_teacher else ''}) B x {tokens} tokens "
        f"x {vocab} vocab = {logits / GIB:.1f} GiB",
        "total": f"{total / GIB:.1f} GiB per device vs {usable / GIB:.1f} GiB usable on {gpu} (90% of {device / GIB:.1f})",
        "min_gpus_fsdp": f"ceil(({state / GIB:.1f} + {teacher / GIB:.1f}) GiB sharded / ({usable / GIB:.1f} - "
        f"{(acts + logits) / GIB:.1f}) GiB left after activations and logits)",
    }
    return MemoryEstimate(
        gpu=gpu,
        device_bytes=device,
        usable_bytes=usable,
        workers=workers,
        strategy=strategy,
        student_params=student_params,
        teacher_params=teacher_params,
        student_state_bytes=state / shards,
        teacher_bytes=teacher / shards,
        activation_bytes=acts,
        activation_bytes_checkpointed=acts_ckpt,
        logits_bytes=logits,
        total_bytes=total,
        fits=total <= usable,
        min_gpus_fsdp=_min_workers(state + teacher, acts + logits, usable),
        min_gpus_fsdp_checkpointed=_min_workers(state + teacher, acts_ckpt + logits, usable),
        arithmetic=arithmetic,
    )
