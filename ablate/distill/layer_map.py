"""kld+intermediate's plumbing: which student layer is matched to which teacher layer, and forward
hooks that catch those layers' post-norm states during the models' ordinary forward passes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ablate.distill.models import kept_indices, pruning_metadata
from ablate.errors import TrainError


def _decoder(model: nn.Module) -> nn.Module:
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(base, "norm"):
        raise TrainError(
            f"{type(model).__name__} does not have the Llama block layout (model.layers, model.norm) that "
            "kld+intermediate hooks into; use loss 'kld'"
        )
    return base


def resolve_layer_map(
    student: nn.Module, teacher: nn.Module, explicit: Sequence[Sequence[int]] | None
) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs whose post-norm states (input_layernorm outputs) are matched.

    The final norms are always matched too. Without an explicit mapping the student must be a pruned
    child of the teacher (same head_dim, KV heads and vocabulary, no axis larger).
    """
    sc, tc = student.config, teacher.config
    ls, lt = sc.num_hidden_layers, tc.num_hidden_layers
    if explicit is not None:
        pairs = [(int(s), int(t)) for s, t in explicit]
        bad = [(s, t) for s, t in pairs if not (0 <= s < ls and 0 <= t < lt)]
        if not pairs or bad:
            raise TrainError(
                f"intermediate_layers {bad or pairs} out of range: student layers are 0..{ls - 1}, "
                f"teacher layers 0..{lt - 1}"
            )
        return pairs
    reasons = []
    shd = getattr(sc, "head_dim", None) or sc.hidden_size // sc.num_attention_heads
    thd = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    if shd != thd:
        reasons.append(f"head_dim {shd} != {thd}")
    if sc.num_key_value_heads != tc.num_key_value_heads:
        reasons.append(f"KV heads {sc.num_key_value_heads} != {tc.num_key_value_heads}")
    for axis in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"):
        if getattr(sc, axis) > getattr(tc, axis):
            reasons.append(f"{axis} {getattr(sc, axis)} > {getattr(tc, axis)}")
    if sc.vocab_size != tc.vocab_size:
        reasons.append(f"vocab_size {sc.vocab_size} != {tc.vocab_size}")
    if reasons:
        raise TrainError(
            "kld+intermediate needs a layer mapping, and the student is not a pruned child of this teacher "
            f"({'; '.join(reasons)}): set intermediate_layers to [[student_layer, teacher_layer], ...]"
        )
    if ls == lt:
        return [(i, i) for i in range(ls)]
    kept = kept_indices(pruning_metadata(student), "kept_layers")
    if kept is not None and len(kept) == ls and all(0 <= k < lt for k in kept):
        return list(enumerate(kept))
    if ls == 1:
        return [(0, 0)]
    return [(i, round(i * (lt - 1) / (ls - 1))) for i in range(ls)]


class Capture:
    """Forward hooks that keep the outputs of the given modules, in order, for one forward pass."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.outputs: list[Tensor | None] = [None] * len(modules)
        self.handles = []
        for i, module in enumerate(modules):
            self.handles.append(module.register_forward_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def take(self) -> list[Tensor]:
        outs = self.outputs
        self.outputs = [None] * len(outs)
        if any(o is None for o in outs):
            raise TrainError("an intermediate layer produced no output during the forward pass")
        return outs  # type: ignore[return-value]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    @classmethod
    def norms(cls, model: nn.Module, layers: Sequence[int]) -> Capture:
        """Capture the input norms of `layers` and the final norm (the states kld+intermediate matches)."""
        base = _decoder(model)
        return cls([base.layers[i].input_layernorm for i in layers] + [base.norm])
