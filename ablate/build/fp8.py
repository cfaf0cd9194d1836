"""FP8 inference through torchao: which FP8 rows a device can measure, and the quantisation itself.

Two recipes, on the decoder blocks' linear layers only (embeddings, norms and lm_head stay BF16, as
TensorRT-LLM keeps lm_head by default):

- ``fp8``: W8A8 dynamic, like TensorRT-LLM's FP8 recipe: float8_e4m3fn weights with one scale per output
  row, activations quantised per token at run time, products on FP8 tensor cores
  (torchao `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`);
- ``fp8-wo``: weight-only, float8 weights per row, products in BF16 (`Float8WeightOnlyConfig`): half the
  weight bytes without FP8 tensor cores' rounding of activations.

torchao is optional (`pip install 'ablate[serve]'`): it is imported only here, only when an FP8 row is
measured, and a machine without it gets the FP8 rows skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

FP8_PRECISIONS = ("fp8", "fp8-wo")
MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada, Hopper, Blackwell
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Capability = Callable[[torch.device], tuple[int, int] | None]


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability of a CUDA device, None for anything else."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def torchao_version() -> str | None:
    """torchao's version when it imports, else None."""
    try:
        import torchao
    except Exception:  # noqa: BLE001 - a broken install is as good as none here
        return None
    return getattr(torchao, "__version__", "unknown")


def fp8_unavailable(
    device: str | torch.device,
    capability: Capability = cuda_capability,
    torchao: Callable[[], str | None] = torchao_version,
) -> str:
    """Why FP8 rows cannot be measured on `device` ("" when they can): CUDA with compute capability
    >= 8.9 and an importable torchao. `capability` and `torchao` are injectable for tests."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FP8 needs a CUDA GPU with FP8 tensor cores (compute capability >= 8.9), not {device.type}"
    cap = capability(device)
    if cap is None:
        return "FP8 needs a CUDA GPU: none is available"
    if tuple(cap) < MIN_CAPABILITY:
        return f"FP8 needs compute capability >= 8.9 (Ada, Hopper, Blackwell); this GPU has {cap[0]}.{cap[1]}"
    if torchao() is None:
        return "FP8 is measured through torchao, which does not import here: pip install 'ablate[serve]'"
    return ""


def is_block_linear(module: nn.Module, name: str) -> bool:
    """The linear layers FP8 quantises: q/k/v/o and the MLP's of the decoder blocks, dimensions multiples of 16."""
    if not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] not in LINEARS:
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def fp8_config(precision: str, set_inductor_config: bool = False):
    """torchao's config object of a precision (`fp8` W8A8 per-row, `fp8-wo` weight-only per-row).

    `set_inductor_config` False keeps torchao from switching on inductor's coordinate-descent tuning,
    which multiplies compile time."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        PerRow,
    )

    if precision == "fp8":
        return Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=set_inductor_config
        )
    if precision == "fp8-wo":
        return Float8WeightOnlyConfig(set_inductor_config=set_inductor_config)
    raise ValueError(f"FP8 precision {precision!r} is not one of {', '.join(FP8_PRECISIONS)}")


def quantize(model: nn.Module, precision: str) -> int:
    """Quantise `model`'s decoder-block linears in place with torchao (the model is BF16 on a GPU);
    returns how many layers were quantised."""
    from torchao.quantization import quantize_

    count = sum(1 for name, m in model.named_modules() if is_block_linear(m, name))
    if count == 0:
        raise ValueError("no decoder-block linear layer to quantise (q/k/v/o/gate/up/down_proj)")
    quantize_(model, fp8_config(precision), filter_fn=is_block_linear)
    return count
