"""`distill.compile`: each decoder layer of the student and the teacher through torch.compile.

Why per layer, before DDP or FSDP wraps the model (as torchtitan does): Inductor fuses each layer's
norms, SwiGLU and rotary into a few kernels, one compiled graph serves every layer of the same shape,
and FSDP2 then shards the compiled layers as it would the eager ones. On one H200 this took the 1B
distillation bench from 28.6% to 33.1% MFU (bench/distill_fsdp.py, fsdp vs fsdp+compile). The model's
state-dict keys stay as they are (nn.Module.compile wraps the call, not the module), so checkpoints and
the published student do not change.
"""

from __future__ import annotations

from torch import nn

from ablate.models.arch import decoder_layers


def _layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "module", model)  # under DDP: the model it wraps
    return decoder_layers(inner)


def compile_layers(model: nn.Module) -> None:
    """Compile each decoder layer in place (torch.compile, Inductor); compiled on first call."""
    for layer in _layers(model):
        layer.compile()


def uncompile_layers(model: nn.Module) -> None:
    """Back to eager layers (what `compile_layers` did, undone), so a caller's model leaves as it came."""
    for layer in _layers(model):
        layer._compiled_call_impl = None  # what nn.Module.compile sets; None is eager
