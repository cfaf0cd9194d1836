"""Distillation: losses (losses.py), the resumable trainer (train.py) and its pieces (config.py,
data_order.py, models.py, layer_map.py, checkpoint.py, parallel.py), teacher correction (correction.py).

Import from the submodules: `from ablate.distill.config import TrainConfig` and
`from ablate.distill.train import train`.
"""
