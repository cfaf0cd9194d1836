"""Distillation: losses (losses.py), the resumable trainer (train.py), teacher correction (correction.py).

Import from the submodules: `from ablate.distill.train import TrainConfig, train`.
"""
