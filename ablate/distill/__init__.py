"""Distillation: losses, the resumable trainer, and teacher correction."""

from ablate.distill.correction import correct_teacher, correction_config
from ablate.distill.train import TrainConfig, TrainResult, lr_at, train

__all__ = ["TrainConfig", "TrainResult", "correct_teacher", "correction_config", "lr_at", "train"]
