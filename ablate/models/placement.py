"""Where a model runs in a stage's process: on the GPUs Ray gave it, split over several when there are.

A shared stage (teacher correction, importance, evaluation) is one process. With one GPU the model
moves there whole; with several, accelerate splits it by decoder layers over all of them, balanced
(the `device_map` way), so a teacher larger than one device still runs its forward passes. Without a
GPU it stays on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def place(
    model: nn.Module,
    split: bool = True,
    device_map: dict[str, Any] | None = None,
    offload_dir: str | None = None,
) -> nn.Module:
    """`model` on this process's devices. `split=False` keeps it whole on the first GPU (training
    loops that own their device); `device_map` names the devices per module (for tests and callers
    that know better than the balanced split)."""
    if device_map is None:
        gpus = gpu_count()
        if gpus == 0:
            return model
        if gpus == 1 or not split:
            return model.to("cuda:0")
        device_map = balanced_device_map(model, gpus)
    from accelerate import dispatch_model

    return dispatch_model(model, device_map=device_map, offload_dir=offload_dir)


def balanced_device_map(model: nn.Module, gpus: int) -> dict[str, Any]:
    """Decoder layers spread evenly over `gpus` devices, never splitting a layer."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    no_split = getattr(model, "_no_split_modules", None) or []
    budget = get_balanced_memory(model, no_split_module_classes=no_split)
    budget = {k: v for k, v in budget.items() if isinstance(k, int) and k < gpus}
    return infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split)
