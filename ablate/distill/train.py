"""The distillation trainer: one function, `train`, that a CLI command or a Ray Tune trial calls.

What it guarantees:
- Exact token accounting: `steps = ceil(tokens / (global_batch * seq_len))`; the run consumes
  `steps * global_batch * seq_len` training tokens (a sequence of seq_len tokens counts seq_len) and
  reports both the budget and what it consumed. A budget smaller than one step is an error.
- Deterministic given the seed: data order is a seeded permutation per epoch (the train split is
  covered in epochs when the budget exceeds it); `scratch` initialisation is seeded. The global RNG is
  forked, so a trial leaves torch's RNG as it found it and two trials in one process don't interact.
- Exact resume: checkpoints (model, optimizer, schedule position, RNG, data position, loss history)
  are written atomically to `out_dir/checkpoint.pt` (one process) or `out_dir/checkpoint/` (sharded,
  torch.distributed.checkpoint, when several workers train); calling `train` again with the same
  `out_dir` continues from either, on any number of workers, and produces the same losses as an
  uninterrupted run (bit-identical on CPU for one process).
- Several workers (`parallel`, see ablate.distill.parallel): DDP or FSDP2; each worker trains on its
  own slice of every global batch, so the run's losses equal the single-process run's.
- A non-finite loss or gradient stops the run with a TrainError naming the step; the state of the
  last good step is checkpointed first, the bad update is never applied.
- Teacher under `torch.inference_mode()`; bf16 autocast on CUDA; losses in float32.
- Thread counts, devices of other tensors and other process-wide settings are the caller's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ablate.diskspace import translating_write_errors
from ablate.distill.losses import (
    LOSSES,
    HiddenProjection,
    combine_dynamic,
    cross_entropy_loss,
    intermediate_loss,
    kl_div_loss,
)
from ablate.distill.parallel import (
    DCP_CHECKPOINT,
    Parallel,
    clip_gradient_groups,
    grad_norm_value,
    load_sharded,
    load_sharded_meta,
    load_training_state,
    save_sharded,
    training_state,
)
from ablate.errors import TrainError

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
CHECKPOINT = "checkpoint.pt"
RESULT = "train_result.json"
CHECKPOINT_FORMAT = 2  # 2: model and optimizer state keyed by parameter name (get_state_dict)
# Fields that do not change the numbers a run produces; a resume may change them.
_NOT_FINGERPRINTED = ("checkpoint_every", "device", "precision")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Budgets are in tokens (ints; parse '20k' before)."""

    loss: str = "kld"  # kld | ce | kld+intermediate | scratch (random init + ce)
    temperature: float = 1.0
    tokens: int = 4096
    lr: float = 1e-4
    min_lr: float = 4.5e-7
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant (after linear warm-up)
    global_batch: int = 8
    micro_batch: int = 4
    seq_len: int = 128
    seed: int = 0
    grad_clip: float | None = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    checkpoint_every: int = 50  # steps; the last step is always checkpointed
    # (student layer, teacher layer) pairs for kld+intermediate; None: identity when depths agree,
    # else the pruning's kept layers when known, else evenly spaced.
    intermediate_layers: list[tuple[int, int]] | None = None
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    device: str | None = None  # None: where the student already is

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / self.tokens_per_step)

    @property
    def tokens_consumed(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def accumulation(self) -> int:
        return self.global_batch // self.micro_batch

    @property
    def needs_teacher(self) -> bool:
        return self.loss in ("kld", "kld+intermediate")

    def problems(self) -> list[str]:
        p: list[str] = []
        if self.loss not in LOSSES:
            p.append(f"loss '{self.loss}' is unknown (expected one of {', '.join(LOSSES)})")
        if self.schedule not in SCHEDULES:
            p.append(f"schedule '{self.schedule}' is unknown (expected one of {', '.join(SCHEDULES)})")
        if self.precision not in PRECISIONS:
            p.append(f"precision '{self.precision}' is unknown (expected one of {', '.join(PRECISIONS)})")
        for name in ("global_batch", "micro_batch", "seq_len", "tokens", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                p.append(f"{name} must be a positive integer (got {value!r})")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            p.append(f"warmup_steps must be a non-negative integer (got {self.warmup_steps!r})")
        if not (self.temperature > 0):
            p.append(f"temperature must be positive (got {self.temperature!r})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            p.append(f"lr must be a positive number (got {self.lr!r})")
        if not (0 <= self.min_lr <= self.lr):
            p.append(f"min_lr must be between 0 and lr={self.lr} (got {self.min_lr!r})")
        if self.grad_clip is not None and not self.grad_clip > 0:
            p.append(f"grad_clip must be positive or None (got {self.grad_clip!r})")
        if self.weight_decay < 0:
            p.append(f"weight_decay must be non-negative (got {self.weight_decay!r})")
        if p:
            return p
        if self.global_batch % self.micro_batch:
            p.append(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch}); "
                "gradient accumulation runs whole micro-batches"
            )
        if self.tokens < self.tokens_per_step:
            p.append(
                f"the budget of {self.tokens} tokens is smaller than one optimizer step "
                f"(global_batch {self.global_batch} x seq_len {self.seq_len} = {self.tokens_per_step} tokens); "
                "raise tokens or lower global_batch"
            )
        return p

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise TrainError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        if self.intermediate_layers is not None:
            d["intermediate_layers"] = [list(pair) for pair in self.intermediate_layers]
        return d

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **overrides: Any) -> TrainConfig:
        """Build from a dict (e.g. the spec's `distill` section plus seq_len and seed).

        Keys that belong to the caller rather than the run (`eval_every`) are ignored; any other
        unknown key is an error.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in {**mapping, **overrides}.items() if k != "eval_every"}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TrainError(
                f"unknown training option(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})"
            )
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        if values.get("intermediate_layers") is not None:
            values["intermediate_layers"] = [
                tuple(int(x) for x in pair) for pair in values["intermediate_layers"]
            ]
        return cls(**values)


@dataclass
class TrainResult:
    steps: int  # optimizer steps of the whole run (all invocations)
    tokens: int  # training tokens consumed = steps * global_batch * seq_len
    tokens_budget: int  # what was asked for
    tokens_per_step: int
    final_loss: float
    loss_curve: list[float]  # one value per step (mean over the step's micro-batches)
    lr_curve: list[float]
    resumed_from_step: int | None  # None: this call started from scratch
    evals: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0  # this call only
    tokens_per_s: float = 0.0  # this call only (0 when it resumed a finished run)
    checkpoint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# schedule and data order


def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """LR used by optimizer step `step` (0-based).

    Warm-up: lr * (step + 1) / warmup_steps for step < warmup_steps (the last warm-up step is at peak).
    Then, with p = (step - W) / (total_steps - W - 1) going 0 -> 1 over the remaining steps:
    cosine: min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2; linear: lr + (min_lr - lr) p; constant: lr.
    The first step after warm-up is at peak and the last step is at min_lr.
    """
    peak, floor, warmup = config.lr, config.min_lr, config.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = total_steps - warmup
    if config.schedule == "constant" or decay_steps <= 1:
        return peak
    p = min(1.0, (step - warmup) / (decay_steps - 1))
    if config.schedule == "linear":
        return peak + (floor - peak) * p
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * p))


class DataOrder:
    """Sequence indices for any position of the run: a seeded permutation of the split per epoch."""

    def __init__(self, seed: int, n: int):
        if n <= 0:
            raise TrainError("the training split is empty; give train() at least one sequence")
        self.seed, self.n = seed, n
        self._cache: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        if self._cache is None or self._cache[0] != epoch:
            digest = hashlib.sha256(f"ablate-data-order:{self.seed}:{epoch}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            self._cache = (epoch, torch.randperm(self.n, generator=gen))
        return self._cache[1]

    def indices(self, start: int, count: int) -> Tensor:
        """Indices of sequences start .. start+count-1 of the run (crossing epochs as needed)."""
        parts, pos = [], start
        while pos < start + count:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, start + count - pos)
            parts.append(self.permutation(epoch)[offset : offset + take])
            pos += take
        return torch.cat(parts)


# ---------------------------------------------------------------------------------------------
# model checks and intermediate-state plumbing


def _logit_dim(model: nn.Module) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and hasattr(out, "out_features"):
        return int(out.out_features)
    return int(model.config.vocab_size)


def check_compatible(
    student: nn.Module,
    teacher: nn.Module | None,
    config: TrainConfig,
    student_tokenizer: Any = None,
    teacher_tokenizer: Any = None,
) -> None:
    """Refuse a student/teacher pair that cannot be distilled with this config, saying why."""
    if config.needs_teacher and teacher is None:
        raise TrainError(f"loss '{config.loss}' needs a teacher; pass one, or use loss 'ce' or 'scratch'")
    if teacher is None:
        return
    sv, tv = _logit_dim(student), _logit_dim(teacher)
    if config.needs_teacher and sv != tv:
        raise TrainError(
            f"the student's vocabulary ({sv} logits) differs from the teacher's ({tv}); distillation on logits "
            "needs the teacher's tokenizer: prune the student from this teacher instead"
        )
    if config.needs_teacher and student_tokenizer is not None and teacher_tokenizer is not None:
        if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise TrainError(
                "the student's tokenizer differs from the teacher's (same size, different tokens); "
                "distillation on logits needs the same tokenizer: prune the student from this teacher"
            )


def _decoder(model: nn.Module) -> nn.Module:
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(base, "norm"):
        raise TrainError(
            f"{type(model).__name__} does not have the Llama block layout (model.layers, model.norm) that "
            "kld+intermediate hooks into; use loss 'kld'"
        )
    return base


def _pruning_metadata(model: nn.Module) -> dict[str, Any]:
    """What a pruning recorded about the student (kept layer / hidden-channel indices), if anything.

    Looks at, in order: the `ablate_kept` bookkeeping `prune_model` attaches to the model it returns,
    an `ablate_pruning` mapping in the config, and `ablate-prune.json` beside a checkpoint on disk.
    """
    kept = getattr(model, "ablate_kept", None)
    if kept is not None and hasattr(kept, "layers"):
        meta: dict[str, Any] = {"kept_layers": list(kept.layers)}
        hidden = getattr(kept, "hidden", None)
        if hidden is not None:
            meta["kept_hidden"] = [int(i) for i in hidden.tolist()]
        return meta
    meta = getattr(model.config, "ablate_pruning", None)
    if isinstance(meta, Mapping):
        return dict(meta)
    source = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if source:
        path = Path(str(source)) / "ablate-prune.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def _kept(meta: Mapping[str, Any], *names: str) -> list[int] | None:
    for name in names:
        value = meta.get(name)
        if isinstance(value, Sequence) and not isinstance(value, str) and value:
            return [int(v) for v in value]
    return None


def resolve_layer_map(student: nn.Module, teacher: nn.Module, explicit: Sequence[Sequence[int]] | None):
    """(student layer, teacher layer) pairs whose post-norm states (input_layernorm outputs) are matched.

    The final norms are always matched too. Without an explicit mapping the student must be a pruned
    child of the teacher (same head_dim, KV heads and vocabulary, no axis larger).
    """
    sc, tc = student.config, teacher.config
    ls, lt = sc.num_hidden_layers, tc.num_hidden_layers
    if explicit is not None:
        pairs = [(int(s), int(t)) for s, t in explicit]
        bad = [(s, t) for s, t in pairs if not (0 <= s < ls and 0 <= t < lt)]
        if not pairs or bad:
            raise TrainError(
                f"intermediate_layers {bad or pairs} out of range: student layers are 0..{ls - 1}, "
                f"teacher layers 0..{lt - 1}"
            )
        return pairs
    reasons = []
    shd = getattr(sc, "head_dim", None) or sc.hidden_size // sc.num_attention_heads
    thd = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    if shd != thd:
        reasons.append(f"head_dim {shd} != {thd}")
    if sc.num_key_value_heads != tc.num_key_value_heads:
        reasons.append(f"KV heads {sc.num_key_value_heads} != {tc.num_key_value_heads}")
    for axis in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"):
        if getattr(sc, axis) > getattr(tc, axis):
            reasons.append(f"{axis} {getattr(sc, axis)} > {getattr(tc, axis)}")
    if sc.vocab_size != tc.vocab_size:
        reasons.append(f"vocab_size {sc.vocab_size} != {tc.vocab_size}")
    if reasons:
        raise TrainError(
            "kld+intermediate needs a layer mapping, and the student is not a pruned child of this teacher "
            f"({'; '.join(reasons)}): set intermediate_layers to [[student_layer, teacher_layer], ...]"
        )
    if ls == lt:
        return [(i, i) for i in range(ls)]
    kept = _kept(_pruning_metadata(student), "kept_layers")
    if kept is not None and len(kept) == ls and all(0 <= k < lt for k in kept):
        return list(enumerate(kept))
    if ls == 1:
        return [(0, 0)]
    return [(i, round(i * (lt - 1) / (ls - 1))) for i in range(ls)]


class _Capture:
    """Forward hooks that keep the outputs of the given modules, in order, for one forward pass."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.outputs: list[Tensor | None] = [None] * len(modules)
        self.handles = []
        for i, module in enumerate(modules):
            self.handles.append(module.register_forward_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def take(self) -> list[Tensor]:
        outs = self.outputs
        self.outputs = [None] * len(outs)
        if any(o is None for o in outs):
            raise TrainError("an intermediate layer produced no output during the forward pass")
        return outs  # type: ignore[return-value]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _norm_modules(model: nn.Module, layers: Sequence[int]) -> list[nn.Module]:
    base = _decoder(model)
    return [base.layers[i].input_layernorm for i in layers] + [base.norm]


# ---------------------------------------------------------------------------------------------
# checkpoints


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write `path` whole or not at all; a full disk is a WriteError naming the path and the free bytes."""
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


def _atomic_write_json(path: Path, data: Any) -> None:
    _atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def _data_digest(batches: Tensor) -> str:
    """Cheap identity of the training split: shape plus a strided sample of up to 1M tokens."""
    flat = batches.reshape(-1)
    stride = max(1, flat.numel() // 1_000_000)
    sample = flat[::stride].to(torch.int64).contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(str(tuple(batches.shape)).encode() + sample).hexdigest()[:16]


def _fingerprint(config: TrainConfig, batches: Tensor, student: nn.Module) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------
# the trainer


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def reinitialise(model: nn.Module, seed: int) -> None:
    """Random weights of the same shape (the `scratch` baseline), seeded, via the model's own init."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(model.config)
    missing, unexpected = model.load_state_dict(fresh.state_dict(), strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise TrainError(
            f"cannot re-initialise {type(model).__name__}: state dicts differ ({missing or unexpected})"
        )


def _param_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def train(
    student: nn.Module,
    teacher: nn.Module | None,
    train_batches: Tensor,
    config: TrainConfig,
    out_dir: str | Path,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
    parallel: Parallel | None = None,
) -> TrainResult:
    """Train `student` in place on `train_batches` ([n, seq_len] token ids) and return what happened.

    loss 'kld' / 'kld+intermediate' distil from `teacher`; 'ce' trains on the data alone (also used for
    teacher correction, with the teacher as `student`); 'scratch' re-initialises the student (seeded)
    and trains it with 'ce'. `on_step(metrics)` gets step, steps, loss, lr, tokens, grad_norm and
    the loss components after every step (raise inside it to stop: the next call resumes from the
    last checkpoint). `eval_fn(student) -> metrics` runs every `eval_every` steps and at the end; its
    results go to `on_step` (prefixed `eval_`) and `TrainResult.evals`.

    With `parallel` (one per worker, from `Parallel.current`), every worker calls `train` with the same
    arguments and whole `train_batches`; `on_step` and `eval_fn` run on every worker (with the same
    values), the result file is written by rank 0. Under FSDP the student stays sharded: gather it with
    `ablate.distill.parallel.full_model_state` to save it.
    """
    config.validate()
    parallel = parallel or Parallel()
    if parallel.world > 1 and config.global_batch % (parallel.world * config.micro_batch):
        raise TrainError(
            f"global_batch ({config.global_batch}) must be a multiple of workers x micro_batch "
            f"({parallel.world} x {config.micro_batch}), so every worker runs whole micro-batches"
        )
    if (
        not isinstance(train_batches, Tensor)
        or train_batches.ndim != 2
        or train_batches.dtype.is_floating_point
    ):
        raise TrainError("train_batches must be an integer tensor of token ids shaped [sequences, seq_len]")
    if train_batches.shape[1] != config.seq_len:
        raise TrainError(
            f"train_batches have sequences of {train_batches.shape[1]} tokens but seq_len is {config.seq_len}; "
            "tokenise the split with the same seq_len"
        )
    if eval_every is not None and eval_every <= 0:
        raise TrainError(f"eval_every must be a positive number of steps (got {eval_every})")
    check_compatible(student, teacher, config)
    if not config.needs_teacher:
        teacher = None

    device = torch.device(config.device) if config.device else next(student.parameters()).device
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        raise TrainError("precision bf16 needs a CUDA device here; use precision 'fp32' or 'auto' on CPU")
    if config.warmup_steps >= config.steps:
        log.warning(
            "warmup_steps (%d) >= steps (%d): the learning rate never reaches its peak",
            config.warmup_steps,
            config.steps,
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    total = config.steps
    fingerprint = _fingerprint(config, train_batches, student)
    ckpt = load_checkpoint(out)
    if ckpt is not None:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise TrainError(
                f"the checkpoint in {out} has format {ckpt.get('format')} (this ablate reads "
                f"{CHECKPOINT_FORMAT}); delete it to restart the run"
            )
        old = ckpt["fingerprint"]
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if diff:
            raise TrainError(
                f"{out} holds a checkpoint of a different run (differs in: {', '.join(diff)}); "
                "use a new output directory, or delete it to start over"
            )

    layer_map: list[tuple[int, int]] = []
    if config.loss == "kld+intermediate":
        layer_map = resolve_layer_map(student, teacher, config.intermediate_layers)
    student.to(device)
    if teacher is not None:
        teacher.to(device)
        teacher.eval()
        teacher = parallel.wrap_teacher(teacher, use_bf16)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    rng_devices = [device] if device.type == "cuda" else []
    history: dict[str, list] = {"loss": [], "lr": [], "metrics": [], "evals": []}
    start_step, resumed_from = 0, None
    t_start = time.perf_counter()

    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(config.seed)
        if config.loss == "scratch" and ckpt is None:
            reinitialise(student, config.seed)
            student.to(device)
        projection: HiddenProjection | None = None
        if config.loss == "kld+intermediate":  # seeded: created after manual_seed
            kept_hidden = _kept(_pruning_metadata(student), "kept_hidden")
            projection = HiddenProjection(student.config.hidden_size, teacher.config.hidden_size, kept_hidden)
            projection.to(device)
        model = parallel.wrap_student(student, device, use_bf16)  # what the loop calls
        modules: list[nn.Module] = [model] + ([projection] if projection is not None else [])
        fast = {"fused": True} if device.type == "cuda" and parallel.strategy != "fsdp" else {}
        optimizer = torch.optim.AdamW(
            _param_groups(modules, config.weight_decay), lr=config.lr, betas=config.betas, **fast
        )
        if ckpt is not None:
            if ckpt.get("sharded"):
                load_sharded(out, model, projection, optimizer)
            else:
                load_training_state(model, projection, optimizer, ckpt, full=True)
            _set_rng_state(ckpt["rng"], device)
            history = ckpt["history"]
            start_step = resumed_from = int(ckpt["step"])
            if int(ckpt["data_position"]) != start_step * config.global_batch:
                raise TrainError(
                    f"checkpoint {ckpt_path} is inconsistent (data position); delete it to restart"
                )
            log.info("resuming %s from step %d of %d", out, start_step, total)
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        order = DataOrder(config.seed, train_batches.shape[0])
        last_saved = start_step if ckpt is not None else -1

        def save(step: int) -> None:
            nonlocal last_saved
            meta = {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "data_position": step * config.global_batch,
                "fingerprint": fingerprint,
                "config": config.to_dict(),
                "workers": parallel.world,
                "rng": _rng_state(device),
                "history": history,
            }
            if parallel.distributed:
                save_sharded(out, parallel, model, projection, optimizer, meta)
                if parallel.is_main:
                    ckpt_path.unlink(missing_ok=True)  # an older one-process checkpoint is superseded
            else:
                state = {**meta, **training_state(model, projection, optimizer, full=True)}
                _atomic_write_bytes(ckpt_path, lambda f: torch.save(state, f))
                shutil.rmtree(out / DCP_CHECKPOINT, ignore_errors=True)
            last_saved = step

        def run_eval(step: int) -> dict[str, float]:
            was_training = student.training
            student.eval()
            try:
                with parallel.no_grad():
                    metrics = {k: float(v) for k, v in dict(eval_fn(student)).items()}
            finally:
                student.train(was_training)
            history["evals"].append({"step": step, **metrics})
            return metrics

        s_capture = t_capture = None
        if layer_map:
            s_capture = _Capture(_norm_modules(student, [s for s, _ in layer_map]))
            t_capture = _Capture(_norm_modules(teacher, [t for _, t in layer_map]))
        student.train()
        optimizer.zero_grad(set_to_none=True)  # gradients the caller left behind are not ours
        try:
            for step in range(start_step, total):
                lr = lr_at(step, total, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = parallel.shard(order.indices(step * config.global_batch, config.global_batch))
                batch = train_batches[idx].to(device, non_blocking=True)
                sums = torch.zeros(3, device=device, dtype=torch.float32)  # loss, logit part, intermediate
                micros = batch.split(config.micro_batch)
                for i, micro in enumerate(micros):
                    with autocast(), parallel.accumulating(model, last=i == len(micros) - 1):
                        t_logits = t_hidden = None
                        if teacher is not None:
                            with parallel.no_grad():
                                t_out = teacher(input_ids=micro, use_cache=False)
                            # Inference tensors cannot be saved for backward: clone outside the mode.
                            t_logits = t_out.logits.clone()
                            if t_capture is not None:
                                t_hidden = [h.clone() for h in t_capture.take()]
                            del t_out
                        s_logits = model(input_ids=micro, use_cache=False).logits
                        if config.loss in ("ce", "scratch"):
                            loss = logit_loss = cross_entropy_loss(s_logits, micro)
                            is_loss = None
                        else:
                            logit_loss = kl_div_loss(s_logits, t_logits, config.temperature)
                            loss, is_loss = logit_loss, None
                            if s_capture is not None:
                                is_loss = intermediate_loss(s_capture.take(), t_hidden, projection)
                                loss = combine_dynamic(logit_loss, is_loss)
                        # Each worker averages its own micro-batches; averaging over workers does the rest.
                        (loss / len(micros)).backward()
                    sums[0] += loss.detach().float()
                    sums[1] += logit_loss.detach().float()
                    if is_loss is not None:
                        sums[2] += is_loss.detach().float()
                parallel.average_gradients(projection)
                if parallel.strategy == "fsdp" and projection is not None:  # DTensors beside plain tensors
                    groups = [[p for p in m.parameters() if p.requires_grad] for m in modules]
                    grad_norm = clip_gradient_groups(groups, config.grad_clip)
                elif config.grad_clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
                else:
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                grad_norm = grad_norm_value(grad_norm)
                sums = parallel.sum(sums)
                values = torch.cat([sums / config.accumulation, grad_norm.reshape(1).float()]).tolist()
                loss_v, logit_v, is_v, norm_v = values
                if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                    optimizer.zero_grad(set_to_none=True)
                    what = f"loss is {loss_v:.4g} and the gradient norm {norm_v:.4g}"
                    if step > last_saved:
                        save(step)  # the weights are still those of the last good step
                    kept = f"step {last_saved}" if last_saved > 0 else "the initial weights"
                    raise TrainError(
                        f"training diverged at step {step + 1} of {total}: the {what} (lr {lr:.3g}); "
                        f"the checkpoint of the last good state ({kept}) is kept in {ckpt_path}; "
                        "lower lr (or warm up longer) and train into a new output directory"
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

                done = step + 1
                history["loss"].append(loss_v)
                history["lr"].append(lr)
                metrics: dict[str, Any] = {
                    "step": done,
                    "steps": total,
                    "loss": loss_v,
                    "lr": lr,
                    "tokens": done * config.tokens_per_step,
                    "grad_norm": norm_v,
                }
                if config.loss in ("kld", "kld+intermediate"):
                    metrics["kl"] = logit_v
                else:
                    metrics["ce"] = logit_v
                if config.loss == "kld+intermediate":
                    metrics["intermediate"] = is_v
                history["metrics"].append(dict(metrics))
                if eval_fn is not None and (done == total or (eval_every and done % eval_every == 0)):
                    metrics.update({f"eval_{k}": v for k, v in run_eval(done).items()})
                if done == total or done % config.checkpoint_every == 0:
                    save(done)
                if on_step is not None:
                    elapsed = time.perf_counter() - t_start
                    metrics["tokens_per_s"] = (
                        (done - start_step) * config.tokens_per_step / max(elapsed, 1e-9)
                    )
                    on_step(dict(metrics))
        finally:
            for cap in (s_capture, t_capture):
                if cap is not None:
                    cap.remove()

    wall = time.perf_counter() - t_start
    ran = total - start_step
    result = TrainResult(
        steps=total,
        tokens=config.tokens_consumed,
        tokens_budget=config.tokens,
        tokens_per_step=config.tokens_per_step,
        final_loss=history["loss"][-1] if history["loss"] else float("nan"),
        loss_curve=list(history["loss"]),
        lr_curve=list(history["lr"]),
        resumed_from_step=resumed_from,
        evals=list(history["evals"]),
        wall_s=wall,
        tokens_per_s=ran * config.tokens_per_step / wall if ran and wall > 0 else 0.0,
        checkpoint=str(ckpt_path),
    )
    if parallel.is_main:
        _atomic_write_json(out / RESULT, result.to_dict())
    if config.tokens_consumed != config.tokens:
        log.info(
            "budget %d tokens -> %d steps of %d tokens = %d tokens consumed",
            config.tokens,
            total,
            config.tokens_per_step,
            config.tokens_consumed,
        )
    return result
