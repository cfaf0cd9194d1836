"""Per-device memory of a distillation trial, and the fewest GPUs that hold it, from shapes alone.

Assumptions (stated in every estimate, since they move the answer a lot), for bf16 mixed precision
(`precision="fp32"`, as on a CPU, doubles the element sizes of the teacher and activations):
- student trained with fp32 master weights: 4 (weights) + 4 (gradients) + 8 (AdamW moments) = 16
  bytes per parameter; FSDP shards all three over the workers, DDP replicates them;
- teacher held for forward passes only, in bf16 (2 bytes per parameter), sharded like the student;
- activations per device at the micro-batch, bf16, fused (flash) attention, transformers' eager layers:
  55 bytes per token, hidden unit and layer when the layers run in bf16 (FSDP2's bf16 parameters), 100
  when fp32 master weights run under bf16 autocast (single, ddp: norms and the residual stream stay
  fp32). Korthikanti et al. (2022) count 34 for fused Megatron layers; these are fitted to peak memory
  measured on one H200 (bench/distill_fsdp.py, a 1.5B/1.0B pair: seq 8192 x micro-batch 4 with a
  131,072 vocabulary, and seq 4096 x 2 with 32,000), the other terms subtracted. With
  `distill.activation_checkpointing` each layer's input is kept (2 bytes, 4 under autocast) plus 230
  bytes per token and hidden unit for the layer being recomputed, its gradients and the backward's
  working set (418 under autocast, scaled by 100/55: not measured). fp32 (CPU) doubles the bf16 figures.
  The fit is within 14% of every measurement above. With `distill.compile` (each decoder layer through
  torch.compile) Inductor fuses the norms, SwiGLU and rotary and saves fewer intermediates: 40 bytes
  instead of 55 (bf16 layers), fitted to two H200 runs (logit chunks of 256 and 4096 positions: 50.9
  and 61.7 GiB measured against 51.7 and 61.1 estimated); checkpointed compiled layers measured 6 GiB
  more than eager ones there (36.3 GiB against 30.2), which 5 bytes instead of 2 per kept layer input
  accounts for (one run; the recomputed layer's 230 B kept). The autocast and fp32 modes are scaled by
  the same ratios (not measured);
- logits: with `distill.logit_chunk` (ablate.distill.losses; `auto` as ablate.distill.chunking resolves
  it on a GPU, `device_type`) at most chunk x vocabulary of each model's
  logits exist at once, 20 bytes per position and vocabulary entry for both models together (the
  student's logits and log-probabilities, the teacher's, and the per-entry KL), plus the student head's
  gradient accumulated over the chunks (fp32, held until backward, where it is scaled into a copy: 8
  bytes per head parameter); the whole
  logits (the unchunked losses, `logit_chunk=None`) are 14 bytes per logit for the student (bf16 output,
  fp32 upcast, log-softmax, gradient) and 10 for the teacher (bf16 output, fp32 upcast, softmax);
- under FSDP, the gathered (unsharded, bf16) parameters: both models' root groups (embedding and head)
  while the loss runs, and two decoder layers of each (the one running and the one prefetched);
- 10% of the device kept free for the CUDA context, allocator fragmentation and communication buffers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ablate.distill.chunking import chunk_positions as resolve_chunk

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
# Activation bytes per token x hidden x layer: (all layers kept, kept input when checkpointed, one layer
# recomputed with its backward's gradients), by how the layers run (see the module docstring).
ACTIVATION_BYTES = {"bf16": (55, 2, 230), "autocast": (100, 4, 418), "fp32": (110, 4, 460)}
# The same with every decoder layer compiled (distill.compile): bf16 fitted, the others scaled by 40/55, 5/2.
COMPILED_ACTIVATION_BYTES = {"bf16": (40, 5, 230), "autocast": (73, 10, 418), "fp32": (80, 10, 460)}
STUDENT_LOGIT_BYTES = 14
TEACHER_LOGIT_BYTES = 10
# Whole logits in fp32 (no upcast copy, but the per-entry KL and its gradient; measured on CPU by
# bench/distill_memory.py at 26 B per logit for both models together).
WHOLE_LOGIT_BYTES = {"bf16": (STUDENT_LOGIT_BYTES, TEACHER_LOGIT_BYTES), "fp32": (16, 10)}
CHUNK_LOGIT_BYTES = 20  # both models, per position x vocabulary entry of a chunk (12 without a teacher)
CHUNK_LOGIT_BYTES_CE = 12
HEAD_GRAD_BYTES = 8  # the head's fp32 gradient, made in the forward pass, and its scaled copy in backward
PRECISIONS = {"bf16": 1, "fp32": 2}  # element-size factor against bf16


def chunk_positions(setting: int | str | None, vocab: int, device_type: str = "cuda") -> int | None:
    """Positions per logit chunk as the trainer resolves them on this device type; None: the unchunked losses."""
    return None if setting is None else resolve_chunk(setting, vocab, device_type)


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
    activation_bytes: float  # per device, as configured (checkpointed when activation_checkpointing)
    activation_bytes_checkpointed: float
    logits_bytes: float  # the logit chunks (or whole logits) and the head's gradient buffer
    total_bytes: float
    fits: bool
    min_gpus_fsdp: (
        int | None
    )  # fewest FSDP workers that fit as configured (None: the rest alone does not fit)
    min_gpus_fsdp_checkpointed: int | None  # the same with activation checkpointing on
    arithmetic: dict[str, str]
    logit_chunk: int | None = None  # positions per chunk (None: whole logits)
    activation_checkpointing: bool = False
    precision: str = "bf16"
    compile: bool = False  # decoder layers through torch.compile (distill.compile)
    # One row per term: name, bytes per device as configured, whether FSDP shards it, its formula.
    terms: list[dict] = field(default_factory=list)
    fsdp_gathered_bytes: float = 0.0  # what FSDP would hold gathered (counted in min_gpus_fsdp)
    # The fewest FSDP workers with a smaller logit_chunk (a CPU's auto), when that is smaller than this one.
    small_chunk: dict | None = None
    advice: str = ""  # how to make it fit, naming the spec fields, when it does not

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
    teacher_hidden: int | None = None,
    teacher_layers: int | None = None,
    logit_chunk: int | str | None = "auto",
    activation_checkpointing: bool = False,
    precision: str = "bf16",
    compile: bool = False,
    device_type: str = "cuda",
) -> MemoryEstimate:
    """Per-device memory of one trial (see the module docstring); `device_type` is where `logit_chunk: auto`
    is resolved ('cuda' for the GPUs the plan sizes; 'cpu' to compare with a CPU run)."""
    device = GPUS[gpu]
    usable = USABLE * device
    f = PRECISIONS[precision]
    t_hidden = teacher_hidden or hidden
    t_layers = teacher_layers or layers
    tokens = seq_len * micro_batch
    chunk = chunk_positions(logit_chunk, vocab, device_type)
    fsdp = strategy == "fsdp"
    shards = workers if fsdp else 1

    state = STUDENT_STATE_BYTES * student_params
    teacher = TEACHER_BYTES * f * teacher_params if needs_teacher else 0.0
    mode = activation_mode(strategy, precision)
    acts_full, acts_ckpt = _activations(mode, tokens, hidden, layers, compile)
    acts = acts_ckpt if activation_checkpointing else acts_full
    # The fewest FSDP workers are counted with FSDP's own activations (bf16 layers), whatever runs now.
    fsdp_full, fsdp_ckpt = _activations(activation_mode("fsdp", precision), tokens, hidden, layers, compile)
    logits, logits_formula = _logits(chunk, tokens, vocab, hidden, needs_teacher, precision)
    # FSDP: gathered bf16 parameters beside the shards (roots during the loss, two layers per model).
    s_layer = max(0, student_params - 2 * vocab * hidden) / max(layers, 1)
    t_layer = max(0, teacher_params - 2 * vocab * t_hidden) / max(t_layers, 1) if needs_teacher else 0
    gathered = 2 * f * (2 * vocab * hidden + (2 * vocab * t_hidden if needs_teacher else 0))
    gathered += 2 * 2 * f * (s_layer + t_layer)
    unsharded = acts + logits + (gathered if fsdp else 0.0)
    total = (state + teacher) / shards + unsharded
    fits = total <= usable
    fsdp_acts = fsdp_ckpt if activation_checkpointing else fsdp_full
    min_gpus = _min_workers(state + teacher, fsdp_acts + logits + gathered, usable)
    min_gpus_ckpt = _min_workers(state + teacher, fsdp_ckpt + logits + gathered, usable)
    # What the smallest automatic chunk (a CPU's) would need instead, for the advice.
    small = chunk_positions("auto", vocab, "cpu")
    small_chunk = None
    if chunk is not None and min(chunk, tokens) > small:
        small_logits = _logits(small, tokens, vocab, hidden, needs_teacher, precision)[0]
        small_chunk = {
            "logit_chunk": small,
            "min_gpus_fsdp": _min_workers(state + teacher, fsdp_acts + small_logits + gathered, usable),
            "min_gpus_fsdp_checkpointed": _min_workers(state + teacher, fsdp_ckpt + small_logits + gathered, usable),
        }

    full, kept, layer = (COMPILED_ACTIVATION_BYTES if compile else ACTIVATION_BYTES)[mode]
    layers_run = f"{mode} layers" + (", compiled" if compile else "")
    terms = [
        _term(
            "student_state",
            state / shards,
            True,
            f"{STUDENT_STATE_BYTES} B x {student_params:,} params / {shards}",
        ),
        _term(
            "teacher",
            teacher / shards,
            True,
            f"{TEACHER_BYTES * f} B x {teacher_params:,} params / {shards}"
            if needs_teacher
            else "0 (no teacher)",
        ),
        _term(
            "activations",
            acts,
            False,
            f"{kept} B x {tokens} tokens x {hidden} hidden x {layers} layers (each layer's input) + {layer} B x "
            f"{tokens} x {hidden} (one layer recomputed, with its gradients; {layers_run})"
            if activation_checkpointing
            else f"{full} B x {tokens} tokens x {hidden} hidden x {layers} layers ({layers_run})",
        ),
        _term("logits", logits, False, logits_formula),
        _term(
            "fsdp_gathered",
            gathered if fsdp else 0.0,
            False,
            f"{2 * f} B x (roots {2 * vocab * hidden:,}"
            + (f" + {2 * vocab * t_hidden:,}" if needs_teacher else "")
            + f" + 2 x layers {s_layer + t_layer:,.0f}) params"
            if fsdp
            else f"0 (not sharded; {gathered / GIB:.1f} GiB under fsdp)",
        ),
    ]
    arithmetic = {t["term"]: f"{t['formula']} = {t['bytes'] / GIB:.1f} GiB" for t in terms}
    arithmetic["total"] = (
        f"{total / GIB:.1f} GiB per device vs {usable / GIB:.1f} GiB usable on {gpu} (90% of {device / GIB:.1f})"
    )
    arithmetic["min_gpus_fsdp"] = (
        f"ceil(({state / GIB:.1f} + {teacher / GIB:.1f}) GiB sharded / ({usable / GIB:.1f} - "
        f"{(fsdp_acts + logits + gathered) / GIB:.1f}) GiB left after FSDP's activations, logits and gathered "
        "parameters)"
    )
    estimate = MemoryEstimate(
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
        fits=fits,
        min_gpus_fsdp=min_gpus,
        min_gpus_fsdp_checkpointed=min_gpus_ckpt,
        arithmetic=arithmetic,
        logit_chunk=chunk,
        activation_checkpointing=activation_checkpointing,
        precision=precision,
        compile=compile,
        terms=terms,
        fsdp_gathered_bytes=gathered,
        small_chunk=small_chunk,
    )
    estimate.advice = "" if fits else advice(estimate)
    return estimate


def activation_mode(strategy: str, precision: str) -> str:
    """How the trainer runs the layers: bf16 parameters (FSDP2's policy), fp32 masters under autocast, or fp32."""
    if precision == "fp32":
        return "fp32"
    return "bf16" if strategy == "fsdp" else "autocast"


def _activations(mode: str, tokens: int, hidden: int, layers: int, compile: bool) -> tuple[float, float]:
    """Activation bytes per device: all layers kept, and with activation checkpointing."""
    full, kept, layer = (COMPILED_ACTIVATION_BYTES if compile else ACTIVATION_BYTES)[mode]
    return float(full * tokens * hidden * layers), float(
        kept * tokens * hidden * layers + layer * tokens * hidden
    )


def _logits(
    chunk: int | None, tokens: int, vocab: int, hidden: int, needs_teacher: bool, precision: str
) -> tuple[float, str]:
    """Bytes of the logits (a chunk of each model's, or the whole) and the head's gradient, and the formula."""
    if chunk is None:
        s_bytes, t_bytes = WHOLE_LOGIT_BYTES[precision]
        per = s_bytes + (t_bytes if needs_teacher else 0)
        return float(per * tokens * vocab), f"{per} B x {tokens} tokens x {vocab} vocab (whole logits)"
    rows = min(chunk, tokens)
    per = CHUNK_LOGIT_BYTES if needs_teacher else CHUNK_LOGIT_BYTES_CE
    return float(per * rows * vocab + HEAD_GRAD_BYTES * vocab * hidden), (
        f"{per} B x {rows} positions (logit_chunk) x {vocab} vocab + {HEAD_GRAD_BYTES} B x {vocab} x {hidden} "
        "head gradient"
    )


def _term(name: str, value: float, sharded: bool, formula: str) -> dict:
    return {
        "term": name,
        "bytes": value,
        "gib": round(value / GIB, 3),
        "sharded": sharded,
        "formula": formula,
    }


def advice(m: MemoryEstimate) -> str:
    """How to fit a trial that does not, naming the spec fields that do it."""
    ckpt = "distill.activation_checkpointing: true"
    named = None  # which count the advice names, to compare with a smaller logit chunk
    if m.min_gpus_fsdp is not None:
        fix = f"shard it: strategy fsdp with at least {m.min_gpus_fsdp} GPUs"
        named = "min_gpus_fsdp"
        if not m.activation_checkpointing and m.min_gpus_fsdp_checkpointed is not None:
            fix += f" ({m.min_gpus_fsdp_checkpointed} with {ckpt})"
    elif not m.activation_checkpointing and m.min_gpus_fsdp_checkpointed is not None:
        fix = f"set {ckpt} and shard it: strategy fsdp with at least {m.min_gpus_fsdp_checkpointed} GPUs"
        named = "min_gpus_fsdp_checkpointed"
    else:
        fix = "activations alone do not fit: lower distill.micro_batch or data.seq_len"
    fewer = m.small_chunk.get(named) if m.small_chunk and named else None
    if fewer is not None and fewer < getattr(m, named):
        fix += (
            f"; distill.logit_chunk: {m.small_chunk['logit_chunk']} needs {fewer} "
            f"(auto's {m.logit_chunk} positions are faster on a GPU)"
        )
    if m.logit_chunk is None:
        fix += "; distill.logit_chunk (auto) makes the logits a chunk at a time"
    return fix


INFERENCE_BYTES = 2  # bf16 weights and KV cache


def inference_bytes(params: Any, layers: Any, kv_heads: int, head_dim: int, seq_len: int, batch: int) -> Any:
    """Memory to serve a model: bf16 weights plus the KV cache (K and V of every layer for seq_len x batch
    tokens), as Model Optimizer's `memory_mb` constraint counts it. Works elementwise on numpy arrays."""
    kv_cache = 2 * INFERENCE_BYTES * layers * kv_heads * head_dim * seq_len * batch
    return INFERENCE_BYTES * params + kv_cache
