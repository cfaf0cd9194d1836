"""Trim weights to a target shape and produce an ordinary Hugging Face model (docs/method.md, "Pruning").

- hidden: embedding columns, every norm weight, q/k/v/gate/up input columns, o/down output rows (and
  their biases), the final norm, lm_head columns; the vocabulary stays; tied embeddings stay tied.
- FFN: the same neuron indices from gate/up rows and down_proj columns.
- heads: query heads removed equally within each KV group (K/V heads and head_dim kept).
- depth: whole layers dropped, the rest renumbered; per-layer config lists follow the kept layers.

Units with the highest scores are kept, in their original order. The new model is built on the meta
device and receives the trimmed tensors (copies: the student never shares storage with the teacher).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ablate.errors import PruneError
from ablate.fsutil import staged_dir
from ablate.models.arch import (
    check_model,
    check_target,
    embeddings_tied,
    head_dim,
    meta_tensors,
    pruned_config,
    rebuild_rotary,
    shape_of,
)
from ablate.prune.scores import ImportanceScores

log = logging.getLogger(__name__)

_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass
class Keep:
    """Indices (into the original model) of every unit that survives."""

    layers: list[int]
    heads: dict[int, Tensor]  # layer -> kept query heads
    mlp: dict[int, Tensor]  # layer -> kept FFN neurons
    hidden: Tensor
    head_dim: int

    def head_rows(self, layer: int) -> Tensor:
        heads = self.heads[layer]
        return (heads[:, None] * self.head_dim + torch.arange(self.head_dim)).flatten()

    def as_dict(self) -> dict:
        return {
            "layers": self.layers,
            "heads": {int(k): v.tolist() for k, v in self.heads.items()},
            "mlp_kept": {int(k): len(v) for k, v in self.mlp.items()},
            "hidden_kept": len(self.hidden),
        }


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores, in ascending index order (ties keep the lower index)."""
    if k > scores.numel():
        raise PruneError(f"cannot keep {k} of {scores.numel()} units")
    order = torch.sort(scores.float(), descending=True, stable=True).indices[:k]
    return order.sort().values


def select(model: PreTrainedModel, scores: ImportanceScores, target: Mapping[str, int]) -> Keep:
    """Which units `target` keeps, by `scores`."""
    config = model.config
    problems = check_target(config, target)
    if problems:
        raise PruneError("; ".join(problems))
    scores.check_matches(config)
    shape = shape_of(config)
    n_layers = shape["num_hidden_layers"]
    new_layers = target.get("num_hidden_layers", n_layers)
    if new_layers == n_layers:
        layers = list(range(n_layers))
    elif scores.settings.get("depth_method") == "contiguous":
        drop = n_layers - new_layers
        if drop not in scores.contiguous:
            raise PruneError(
                f"contiguous depth scores for dropping {drop} layers were not computed "
                f"(have {sorted(scores.contiguous)}); estimate importance with contiguous_drops={drop}"
            )
        start = int(torch.argmin(scores.contiguous[drop]))
        layers = [i for i in range(n_layers) if not start <= i < start + drop]
    else:
        layers = top_k(scores.depth, new_layers).tolist()
    heads_total, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    new_heads = target.get("num_attention_heads", heads_total)
    group, new_group = heads_total // kv, new_heads // kv
    heads = {}
    for i in layers:
        if new_heads == heads_total:
            heads[i] = torch.arange(heads_total)
        else:
            per_group = scores.heads[i].view(kv, group)
            heads[i] = torch.cat([top_k(per_group[g], new_group) + g * group for g in range(kv)])
    ffn = shape["intermediate_size"]
    new_ffn = target.get("intermediate_size", ffn)
    mlp = {i: torch.arange(ffn) if new_ffn == ffn else top_k(scores.mlp[i], new_ffn) for i in layers}
    hid = shape["hidden_size"]
    new_hidden = target.get("hidden_size", hid)
    hidden = torch.arange(hid) if new_hidden == hid else top_k(scores.hidden, new_hidden)
    return Keep(layers=layers, heads=heads, mlp=mlp, hidden=hidden, head_dim=head_dim(config))


def _slicer(keep: Keep, layer: int | None, part: str) -> Callable[[Tensor], Tensor] | None:
    """How to trim the tensor named `part` (of `layer`, or top-level when None); None = unknown name."""
    hid = keep.hidden

    def cols(idx):
        return lambda t: t.index_select(1, idx)

    def rows(idx):
        return lambda t: t.index_select(0, idx)

    def both(r, c):
        return lambda t: t.index_select(0, r).index_select(1, c)

    if layer is None:
        return {
            "model.embed_tokens.weight": cols(hid),
            "lm_head.weight": cols(hid),
            "model.norm.weight": rows(hid),
        }.get(part)
    q_rows, ffn = keep.head_rows(layer), keep.mlp[layer]
    table = {
        "input_layernorm.weight": rows(hid),
        "post_attention_layernorm.weight": rows(hid),
        "self_attn.q_proj.weight": both(q_rows, hid),
        "self_attn.q_proj.bias": rows(q_rows),
        "self_attn.k_proj.weight": cols(hid),
        "self_attn.k_proj.bias": lambda t: t,
        "self_attn.v_proj.weight": cols(hid),
        "self_attn.v_proj.bias": lambda t: t,
        "self_attn.o_proj.weight": both(hid, q_rows),
        "self_attn.o_proj.bias": rows(hid),
        "self_attn.q_norm.weight": lambda t: t,  # Qwen3: per head_dim, head_dim is kept
        "self_attn.k_norm.weight": lambda t: t,
        "mlp.gate_proj.weight": both(ffn, hid),
        "mlp.gate_proj.bias": rows(ffn),
        "mlp.up_proj.weight": both(ffn, hid),
        "mlp.up_proj.bias": rows(ffn),
        "mlp.down_proj.weight": both(hid, ffn),
        "mlp.down_proj.bias": rows(hid),
    }
    return table.get(part)


def pruned_state_dict(model: PreTrainedModel, keep: Keep) -> dict[str, Tensor]:
    """The trimmed weights under the new (renumbered) names; all fresh copies."""
    new_index = {old: new for new, old in enumerate(keep.layers)}
    tied = embeddings_tied(model)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tied and name == "lm_head.weight":
                continue
            match = _LAYER_KEY.match(name)
            if match:
                layer, part = int(match.group(1)), match.group(2)
                if layer not in new_index:
                    continue
                fn = _slicer(keep, layer, part)
                new_name = f"model.layers.{new_index[layer]}.{part}"
            else:
                fn = _slicer(keep, None, name)
                new_name = name
            if fn is None:
                raise PruneError(
                    f"'{name}' is a weight ablate does not know how to prune ({type(model).__name__}); "
                    "only Llama-layout blocks are supported"
                )
            out[new_name] = fn(tensor.detach()).clone().contiguous()
    return out


def prune_model(
    model: PreTrainedModel, scores: ImportanceScores, target: Mapping[str, int]
) -> PreTrainedModel:
    """A new model trimmed to `target` (any subset of hidden_size, intermediate_size, num_attention_heads,
    num_hidden_layers), keeping the highest-scoring units. The input model is not modified."""
    check_model(model)
    target = {k: int(v) for k, v in target.items()}
    keep = select(model, scores, target)
    config = pruned_config(model.config, target, kept_layers=keep.layers)
    config.dtype = model.dtype
    state = pruned_state_dict(model, keep)
    attn = getattr(model.config, "_attn_implementation", None)
    with torch.device("meta"):
        new = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    missing, unexpected = new.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - allowed_missing:
        raise PruneError(
            f"pruned weights do not fit the pruned architecture (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); this is a bug in ablate"
        )
    if config.tie_word_embeddings:
        new.tie_weights()
    rebuild_rotary(new)
    leftover = meta_tensors(new)
    if leftover:
        raise PruneError(
            f"pruned model still has uninitialised tensors {leftover[:5]}; this is a bug in ablate"
        )
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = model.generation_config
    new.train(model.training)
    new.ablate_kept = keep  # the bookkeeping, for reports and tests
    return new


# --- saving ---------------------------------------------------------------------------------------


def save_pruned(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    extra: Mapping[str, object] | None = None,
    scores: ImportanceScores | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a standard HF checkpoint (safetensors + config.json + tokenizer) to `out_dir`, atomically.

    Everything is written into a temporary sibling directory that is renamed to `out_dir` only when
    complete, so a failure leaves nothing half-written there. `extra` is saved as ablate-prune.json and
    `scores` as ablate-importance.safetensors next to the weights (plain transformers ignores both).
    """
    out = Path(out_dir).expanduser().resolve()
    check_out_dir(out, overwrite)
    with staged_dir(out, before_publish=lambda: check_out_dir(out, overwrite)) as tmp:
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            (tmp / "ablate-prune.json").write_text(
                json.dumps(extra, indent=2, sort_keys=True, default=str) + "\n"
            )
        if scores is not None:
            scores.save(tmp / "ablate-importance.safetensors")
    return out


def check_out_dir(out: str | Path, overwrite: bool = False) -> None:
    """Refuse an output path that holds something, unless overwriting was asked for."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PruneError(f"--out '{out}' exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PruneError(f"--out '{out}' exists and is not empty; choose a new directory or pass --force")
