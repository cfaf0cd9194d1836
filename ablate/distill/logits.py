"""A causal LM's final hidden states and LM head, so losses can make the logits a chunk at a time.

Every pass still goes through the model's own `forward` (and so through DDP's and FSDP's hooks, which
gather and reshard parameters and reduce gradients): the LM head is swapped, for one call, for a module
that returns its input (`final_hidden`) or a loss computed from its input and the real head's weights
(`head_loss`). `head_of` gives the real head's weights outside a forward pass, gathered when the model
is sharded with FSDP2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from ablate.distill.losses import Head
from ablate.errors import TrainError


def _inner(model: nn.Module) -> nn.Module:
    """The causal LM inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _head_name(model: nn.Module) -> str:
    inner = _inner(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    for name, module in inner.named_children():
        if module is head and isinstance(module, nn.Linear):
            return name
    raise TrainError(
        f"{type(inner).__name__} has no linear LM head (get_output_embeddings); chunked logit losses need one"
    )


class _Swapped(nn.Module):
    """Stands in for the LM head during one forward pass: `fn(hidden, Head(real weights))`."""

    def __init__(self, real: nn.Linear, fn: Callable[[Tensor, Head], Tensor]):
        super().__init__()
        self.real = real  # FSDP sets the gathered weights on it, so they are read at call time
        self.fn = fn

    def forward(self, hidden: Tensor) -> Tensor:
        return self.fn(hidden, Head(self.real.weight, self.real.bias))


@contextmanager
def _swapped_head(model: nn.Module, fn: Callable[[Tensor, Head], Tensor]) -> Iterator[None]:
    inner, name = _inner(model), _head_name(model)
    real = getattr(inner, name)
    inner._modules[name] = _Swapped(real, fn)  # not setattr: no re-registration of parameters
    try:
        yield
    finally:
        inner._modules[name] = real


def head_loss(model: nn.Module, input_ids: Tensor, fn: Callable[[Tensor, Head], Tensor]) -> Tensor:
    """`fn(final hidden states, LM head)` computed inside the model's forward pass (so under DDP and
    FSDP the head's weights are the gathered ones and their gradient is reduced as usual)."""
    with _swapped_head(model, fn):
        return model(input_ids=input_ids, use_cache=False).logits


def final_hidden(model: nn.Module, input_ids: Tensor) -> Tensor:
    """The final (post-norm) hidden states [B, S, H] the LM head would read; no logits are made."""
    return head_loss(model, input_ids, lambda hidden, _head: hidden)


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(model, FSDPModule)


@contextmanager
def head_of(model: nn.Module) -> Iterator[Head]:
    """The LM head's weights as plain tensors, for use outside a forward pass (no gradient). Under
    FSDP2 the root's parameters (embedding, final norm, head) are gathered for the duration."""
    inner = _inner(model)
    fsdp = _is_fsdp(inner)
    if fsdp:
        inner.unshard()
    try:
        real = getattr(inner, _head_name(model))
        bias = None if real.bias is None else real.bias.detach()
        yield Head(real.weight.detach(), bias)
    finally:
        if fsdp:
            inner.reshard()


def enable_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing per decoder layer, non-reentrant (the model's own, HF's)."""
    inner = _inner(model)
    enable = getattr(inner, "activation_checkpointing_enable", None)  # transformers >= 5.x
    legacy = getattr(inner, "gradient_checkpointing_enable", None)
    if not getattr(inner, "supports_gradient_checkpointing", False) or (enable is None and legacy is None):
        raise TrainError(
            f"activation_checkpointing is on, but {type(inner).__name__} cannot checkpoint its layers "
            "(supports_gradient_checkpointing is False); set activation_checkpointing: false"
        )
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        legacy(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_checkpointing(model: nn.Module) -> bool:
    inner = _inner(model)
    if hasattr(type(inner), "is_activation_checkpointing"):
        return bool(inner.is_activation_checkpointing)
    return bool(getattr(inner, "is_gradient_checkpointing", False))


def disable_checkpointing(model: nn.Module) -> None:
    inner = _inner(model)
    if not is_checkpointing(inner):
        return
    if hasattr(inner, "activation_checkpointing_disable"):
        inner.activation_checkpointing_disable()
    else:
        inner.gradient_checkpointing_disable()
