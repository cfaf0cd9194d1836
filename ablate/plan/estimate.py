"""Compute estimates without weights: exact parameter counts (the real transformers architecture on the
meta device), training FLOPs and GPU-hours at a stated utilisation.

FLOPs of a distillation run: 6 x student params x tokens (forward + backward) plus, when the loss
needs the teacher's logits, 2 x teacher params x tokens for its forward passes. Teacher correction:
6 x teacher params x tokens. Importance: 2 x teacher params x calibration tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import PretrainedConfig

from ablate.models.arch import count_parameters, pruned_config, shape_of
from ablate.plan.memory import MemoryEstimate, estimate_memory
from ablate.spec.sweep import Trial

H100_BF16_DENSE_FLOPS = 989e12
TEACHER_LOSSES = ("kld", "kld+intermediate")


@dataclass
class ModelEstimate:
    name: str
    params: int
    shape: dict[str, int]


@dataclass
class TrialEstimate:
    key: str
    overrides: dict
    target: str
    params: int
    tokens: int
    flops: float
    gpu_hours: float
    workers: int = 1
    strategy: str = "single"
    memory: MemoryEstimate | None = None


@dataclass
class Estimate:
    teacher: ModelEstimate
    targets: list[ModelEstimate]
    trials: list[TrialEstimate]
    correction_tokens: int
    correction_flops: float
    importance_flops: float
    mfu: float
    peak_flops: float

    def gpu_hours(self, flops: float) -> float:
        return flops / (self.mfu * self.peak_flops) / 3600

    @property
    def total_flops(self) -> float:
        return self.correction_flops + self.importance_flops + sum(t.flops for t in self.trials)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["correction_gpu_hours"] = self.gpu_hours(self.correction_flops)
        out["total_flops"] = self.total_flops
        out["total_gpu_hours"] = self.gpu_hours(self.total_flops)
        return out


def distill_flops(student_params: int, teacher_params: int, tokens: int, loss: str) -> float:
    teacher_term = 2 * teacher_params * tokens if loss in TEACHER_LOSSES else 0
    return 6.0 * student_params * tokens + teacher_term


def estimate(
    teacher_config: PretrainedConfig,
    trials: list[Trial],
    mfu: float = 0.4,
    peak_flops: float = H100_BF16_DENSE_FLOPS,
    gpu: str = "h100-80gb",
) -> Estimate:
    teacher_params = count_parameters(teacher_config)
    teacher = ModelEstimate("teacher", teacher_params, shape_of(teacher_config))
    targets: dict[str, ModelEstimate] = {}
    for trial in trials:
        if trial.target not in targets:
            config = pruned_config(teacher_config, trial.shape)
            targets[trial.target] = ModelEstimate(trial.target, count_parameters(config), shape_of(config))
    rows = []
    for trial in trials:
        d = trial.spec.distill
        params = targets[trial.target].params
        flops = distill_flops(params, teacher_params, d.tokens, d.loss)
        res = trial.spec.resources.trial
        shape = targets[trial.target].shape
        memory = estimate_memory(
            student_params=params,
            teacher_params=teacher_params,
            layers=shape["num_hidden_layers"],
            hidden=shape["hidden_size"],
            vocab=shape["vocab_size"],
            seq_len=trial.spec.data.seq_len,
            micro_batch=d.micro_batch,
            needs_teacher=d.loss in TEACHER_LOSSES,
            workers=res.workers,
            strategy=res.strategy,
            gpu=gpu,
            teacher_hidden=teacher.shape["hidden_size"],
            teacher_layers=teacher.shape["num_hidden_layers"],
            logit_chunk=d.logit_chunk,
            activation_checkpointing=d.activation_checkpointing,
            compile=d.compile,
        )
        rows.append(
            TrialEstimate(
                trial.key,
                trial.overrides,
                trial.target,
                params,
                d.tokens,
                flops,
                0.0,
                res.workers,
                res.strategy,
                memory,
            )
        )
    spec = trials[0].spec if trials else None
    correction = spec.teacher.correction if spec else None
    correction_tokens = correction.tokens if correction else 0
    calibration_tokens = spec.calibration.samples * spec.data.seq_len if spec else 0
    result = Estimate(
        teacher=teacher,
        targets=list(targets.values()),
        trials=rows,
        correction_tokens=correction_tokens,
        correction_flops=6.0 * teacher_params * correction_tokens,
        importance_flops=2.0 * teacher_params * calibration_tokens,
        mfu=mfu,
        peak_flops=peak_flops,
    )
    for row in rows:
        row.gpu_hours = result.gpu_hours(row.flops)
    return result
