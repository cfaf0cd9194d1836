"""Teacher correction: fine-tune the teacher on the distillation corpus before importance and distillation.

The Minitron papers found that a teacher never trained on the distillation data gives a worse student;
a short fine-tune with plain cross-entropy (peak LR about 1/5 of the original pre-training LR, 120
warm-up steps) fixes that. It is the same trainer with loss 'ce' and no teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ablate.distill.config import TrainConfig, TrainResult
from ablate.distill.train import train
from ablate.errors import TrainError
from ablate.spec.schema import Correction

_DEFAULTS = Correction.model_fields  # the spec's teacher.correction: the paper's LR and warm-up


def correction_config(
    tokens: int,
    lr: float = _DEFAULTS["lr"].default,
    min_lr: float = _DEFAULTS["min_lr"].default,
    warmup_steps: int = _DEFAULTS["warmup_steps"].default,
    **overrides: Any,
) -> TrainConfig:
    """A TrainConfig for teacher correction (loss 'ce'); lr, min_lr and warm-up default to the spec's
    `teacher.correction`, other fields as in TrainConfig."""
    if overrides.get("loss", "ce") != "ce":
        raise TrainError("teacher correction trains with loss 'ce' (there is no teacher of the teacher)")
    overrides.pop("loss", None)
    return TrainConfig(loss="ce", tokens=tokens, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, **overrides)


def correct_teacher(
    teacher: nn.Module, train_batches: Tensor, config: TrainConfig, out_dir: str | Path, **options: Any
) -> TrainResult:
    """Fine-tune `teacher` in place with `train` and leave it in eval mode. `options` are train's
    keywords (on_step, eval_fn, eval_every, parallel): resumable and on several workers like `train`."""
    if config.loss != "ce":
        raise TrainError(
            f"teacher correction trains with loss 'ce', not '{config.loss}'; use correction_config()"
        )
    result = train(teacher, None, train_batches, config, out_dir, **options)
    teacher.eval()
    return result
