"""The student and teacher as the trainer takes them: whether they can be distilled at all, what a
pruning recorded about the student, and the `scratch` baseline's re-initialisation."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablate.distill.config import TrainConfig
from ablate.errors import TrainError


def _logit_dim(model: nn.Module) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and hasattr(out, "out_features"):
        return int(out.out_features)
    return int(model.config.vocab_size)


def check_compatible(
    student: nn.Module,
    teacher: nn.Module | None,
    config: TrainConfig,
    student_tokenizer: Any = None,
    teacher_tokenizer: Any = None,
) -> None:
    """Refuse a student/teacher pair that cannot be distilled with this config, saying why."""
    if config.needs_teacher and teacher is None:
        raise TrainError(f"loss '{config.loss}' needs a teacher; pass one, or use loss 'ce' or 'scratch'")
    if teacher is None:
        return
    sv, tv = _logit_dim(student), _logit_dim(teacher)
    if config.needs_teacher and sv != tv:
        raise TrainError(
            f"the student's vocabulary ({sv} logits) differs from the teacher's ({tv}); distillation on logits "
            "needs the teacher's tokenizer: prune the student from this teacher instead"
        )
    if config.needs_teacher and student_tokenizer is not None and teacher_tokenizer is not None:
        if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise TrainError(
                "the student's tokenizer differs from the teacher's (same size, different tokens); "
                "distillation on logits needs the same tokenizer: prune the student from this teacher"
            )


def pruning_metadata(model: nn.Module) -> dict[str, Any]:
    """What a pruning recorded about the student (kept layer / hidden-channel indices), if anything.

    Looks at, in order: the `ablate_kept` bookkeeping `prune_model` attaches to the model it returns,
    an `ablate_pruning` mapping in the config, and `ablate-prune.json` beside a checkpoint on disk.
    """
    kept = getattr(model, "ablate_kept", None)
    if kept is not None and hasattr(kept, "layers"):
        meta: dict[str, Any] = {"kept_layers": list(kept.layers)}
        hidden = getattr(kept, "hidden", None)
        if hidden is not None:
            meta["kept_hidden"] = [int(i) for i in hidden.tolist()]
        return meta
    meta = getattr(model.config, "ablate_pruning", None)
    if isinstance(meta, Mapping):
        return dict(meta)
    source = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if source:
        path = Path(str(source)) / "ablate-prune.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def kept_indices(meta: Mapping[str, Any], *names: str) -> list[int] | None:
    """The first non-empty index list among `names` in pruning metadata, or None."""
    for name in names:
        value = meta.get(name)
        if isinstance(value, Sequence) and not isinstance(value, str) and value:
            return [int(v) for v in value]
    return None


def reinitialise(model: nn.Module, seed: int) -> None:
    """Random weights of the same shape (the `scratch` baseline), seeded, via the model's own init."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(model.config)
    missing, unexpected = model.load_state_dict(fresh.state_dict(), strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise TrainError(
            f"cannot re-initialise {type(model).__name__}: state dicts differ ({missing or unexpected})"
        )


def meta_copy(config: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """The model of `config` on the meta device: its shapes, no weights. What an FSDP worker other than
    rank 0 passes to `train` (rank 0 passes the loaded model; the others get their shards of its weights
    when the trainer shards them), so only rank 0 ever holds a whole copy. `dtype`: rank 0's."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype) if dtype is not None else model
