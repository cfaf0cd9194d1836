"""What defines a training run (`TrainConfig`), what it reports (`TrainResult`), and its LR schedule.

The defaults are the spec schema's (`ablate.spec.schema.Distill`, `Data.seq_len`), so a run from the
CLI, from the Python API and from a spec agree without anyone keeping them in step; the steps formula
and the one-step rule are `ablate.spec.budget`'s, shared with the spec's validator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ablate.errors import TrainError
from ablate.spec import budget
from ablate.spec.schema import AUTO_EVALS, LOSSES, SCHEDULES, Data, Distill

PRECISIONS = ("auto", "bf16", "fp32")


def _spec_default(name: str, model: type = Distill) -> Any:
    return model.model_fields[name].default


@dataclass
class TrainConfig:
    """Everything that defines a training run. Budgets are in tokens (ints; parse '20k' before)."""

    loss: str = _spec_default("loss")  # kld | ce | kld+intermediate | scratch (random init + ce)
    temperature: float = _spec_default("temperature")
    tokens: int = 4096  # the spec has no default budget; this one is for tests and scripts
    lr: float = _spec_default("lr")
    min_lr: float = _spec_default("min_lr")
    warmup_steps: int = _spec_default("warmup_steps")
    schedule: str = _spec_default("schedule")  # cosine | linear | constant (after linear warm-up)
    global_batch: int = _spec_default("global_batch")
    micro_batch: int = _spec_default("micro_batch")
    seq_len: int = _spec_default("seq_len", Data)
    seed: int = 0
    grad_clip: float | None = _spec_default("grad_clip")
    weight_decay: float = _spec_default("weight_decay")
    betas: tuple[float, float] = (0.9, 0.95)
    checkpoint_every: int = _spec_default("checkpoint_every")  # steps; the last step is always checkpointed
    # (student layer, teacher layer) pairs for kld+intermediate; None: identity when depths agree,
    # else the pruning's kept layers when known, else evenly spaced.
    intermediate_layers: list[tuple[int, int]] | None = _spec_default("intermediate_layers")
    # How the run uses memory (same losses up to rounding): positions per chunk of the LM head and logit
    # loss ('auto': ablate.distill.chunking, by device), and per-layer activation checkpointing.
    logit_chunk: int | str = _spec_default("logit_chunk")
    activation_checkpointing: bool = _spec_default("activation_checkpointing")
    # Each decoder layer through torch.compile (ablate.distill.compiled): speed, not memory.
    compile: bool = _spec_default("compile")
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    device: str | None = None  # None: where the student already is

    @property
    def tokens_per_step(self) -> int:
        return budget.tokens_per_step(self.global_batch, self.seq_len)

    @property
    def steps(self) -> int:
        return budget.steps(self.tokens, self.global_batch, self.seq_len)

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
        """Every problem with the values (a config built without the spec's checks gets them here)."""
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
        if self.logit_chunk != "auto" and (
            not isinstance(self.logit_chunk, int)
            or isinstance(self.logit_chunk, bool)
            or self.logit_chunk <= 0
        ):
            p.append(
                f"logit_chunk must be a positive number of positions or 'auto' (got {self.logit_chunk!r})"
            )
        if not isinstance(self.activation_checkpointing, bool):
            p.append(
                f"activation_checkpointing must be true or false (got {self.activation_checkpointing!r})"
            )
        if not isinstance(self.compile, bool):
            p.append(f"compile must be true or false (got {self.compile!r})")
        elif self.compile and self.loss == "kld+intermediate":
            p.append("compile does not work with loss kld+intermediate (its hooks inside the layers)")
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
        if not budget.fits_one_step(self.tokens, self.global_batch, self.seq_len):
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


def eval_interval(eval_every: int | None, steps: int) -> int:
    """Steps between held-out evaluations during a run of `steps` steps; 0: none.

    The spec's `distill.eval_every` is hashed into every trial's stage config, so its default (None)
    cannot change without moving every trial key; instead None means "automatic", resolved here at run
    time: about AUTO_EVALS evaluations evenly over the run (the last at or just before the final step,
    which is always evaluated), and none for runs under AUTO_EVALS steps, whose trial eval already gives
    the final point. 0 turns them off; N > 0 evaluates every N steps.
    """
    if eval_every is not None:
        if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
            raise TrainError(
                f"eval_every must be a number of steps >= 0 (0: none) or None (automatic), got {eval_every!r}"
            )
        return eval_every
    if steps < AUTO_EVALS:
        return 0
    return math.ceil(steps / AUTO_EVALS)


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
