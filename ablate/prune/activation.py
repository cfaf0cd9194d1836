"""Activation importance of every prunable unit from forward passes only (Minitron).

One calibration pass scores, with hooks and no gradients:
- attention heads: each head's slice of the `o_proj` input, either L2 over head_dim per token and then
  the sequence/sample aggregation (`token_l2`, ablate's order), or the sequence/sample aggregation per
  channel and then L2 over head_dim (`channel_l2`, Model Optimizer's order);
- MLP neurons: the `down_proj` input (after SwiGLU, as Model Optimizer) or the `gate_proj` output
  (the pre-activation X W1^T of the paper), site `gate_up`;
- embedding channels: the outputs of every layer's two RMSNorms, scored per norm and summed over norms;
- depth: Block Importance BI_i = 1 - mean cos(x_i, x_{i+1}) over all tokens.

How activations are aggregated over the sequence and the samples is ablate.prune.moments'.

Depth by LM loss (`lm_loss`: loss increase when layer i alone is skipped) and contiguous blocks
(`contiguous`: LM loss, or KL(full model || model) with `contiguous_metric` kl_to_teacher, with layers
[s, s+k) skipped, for each requested k) need one extra pass over the calibration data per candidate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from ablate.data.corpus import batches as as_batches
from ablate.distill.logits import final_hidden, head_of
from ablate.distill.losses import chunked_eval_sums
from ablate.errors import PruneError
from ablate.models.arch import check_model, decoder_layers, head_dim, shape_of, skip_layers
from ablate.prune.moments import AGGREGATIONS, RowMoments, seq_reduce
from ablate.prune.scores import ImportanceScores, scores_from_state

log = logging.getLogger(__name__)

MLP_SITES = ("down_proj_input", "gate_up")
DEPTH_METHODS = ("block_importance", "lm_loss", "contiguous")
HEAD_AGGREGATIONS = ("token_l2", "channel_l2")
CONTIGUOUS_METRICS = ("lm_loss", "kl_to_teacher")


def _layer_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _layer_output(output) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _hooks(
    model: PreTrainedModel, acc: dict, seq_agg: str, mlp_site: str, head_aggregation: str
) -> Iterator[None]:
    handles = []
    hd = head_dim(model.config)
    try:
        for i, layer in enumerate(decoder_layers(model)):

            def o_proj_in(module, args, i=i):
                x = args[0]
                if head_aggregation == "channel_l2":  # per channel now, L2 over head_dim when read
                    acc["heads"].update_row(i, seq_reduce(x, seq_agg))
                    return
                per_head = torch.linalg.vector_norm(x.unflatten(-1, (-1, hd)).float(), ord=2, dim=-1)
                acc["heads"].update_row(i, seq_reduce(per_head, seq_agg))

            def down_in(module, args, i=i):
                acc["mlp"].update_row(i, seq_reduce(args[0], seq_agg))

            def gate_out(module, args, output, i=i):
                acc["mlp"].update_row(i, seq_reduce(output, seq_agg))

            def norm_out(module, args, output, row):
                acc["hidden"].update_row(row, seq_reduce(output, seq_agg))

            def block(module, args, kwargs, output, i=i):
                x_in = _layer_input(args, kwargs).float()
                x_out = _layer_output(output).float()
                cos = F.cosine_similarity(x_in, x_out, dim=-1)
                acc["bi_cos_sum"][i] += cos.sum(dtype=torch.float64).to(acc["bi_cos_sum"].device)
                if i == 0:
                    acc["bi_tokens"] += cos.numel()

            attn, mlp = layer.self_attn, layer.mlp
            handles.append(attn.o_proj.register_forward_pre_hook(o_proj_in))
            if mlp_site == "down_proj_input":
                handles.append(mlp.down_proj.register_forward_pre_hook(down_in))
            else:
                handles.append(mlp.gate_proj.register_forward_hook(gate_out))
            handles.append(
                layer.input_layernorm.register_forward_hook(lambda m, a, o, r=2 * i: norm_out(m, a, o, r))
            )
            handles.append(
                layer.post_attention_layernorm.register_forward_hook(
                    lambda m, a, o, r=2 * i + 1: norm_out(m, a, o, r)
                )
            )
            handles.append(layer.register_forward_hook(block, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _lm_loss_sum(model: PreTrainedModel, batch: Tensor) -> Tensor:
    """Summed next-token NLL of `batch` (float64), the logits made a chunk of positions at a time."""
    return _next_token_nll(model, final_hidden(model, batch), batch)


def _next_token_nll(model: PreTrainedModel, hidden: Tensor, batch: Tensor) -> Tensor:
    """Summed next-token NLL from the final hidden states: per-token losses in float32, summed in float64."""
    with head_of(model) as head:
        return chunked_eval_sums(hidden, head, batch)["nll"]


def estimate_importance(
    model: PreTrainedModel,
    batches: Iterable[Tensor] | Tensor,
    batch_agg: str = "l2",
    seq_agg: str = "mean",
    mlp_site: str = "down_proj_input",
    depth_method: str = "block_importance",
    contiguous_drops: Sequence[int] = (),
    batch_size: int = 8,
    head_aggregation: str = "token_l2",
    contiguous_metric: str = "lm_loss",
) -> ImportanceScores:
    """Activation importance of heads, MLP neurons, hidden channels and layers from one pass over `batches`.

    `contiguous_drops` lists the block sizes k for which every contiguous block of k layers is scored
    (needed by depth_method="contiguous"); `lm_loss` and `contiguous` take extra passes.
    `head_aggregation` orders the head reductions (module docstring); `contiguous_metric` scores a
    skipped block by LM loss or by KL to the full model (whose final hidden states are then kept).
    """
    for name, value, allowed in (
        ("batch_agg", batch_agg, AGGREGATIONS),
        ("seq_agg", seq_agg, AGGREGATIONS),
        ("mlp_site", mlp_site, MLP_SITES),
        ("depth_method", depth_method, DEPTH_METHODS),
        ("head_aggregation", head_aggregation, HEAD_AGGREGATIONS),
        ("contiguous_metric", contiguous_metric, CONTIGUOUS_METRICS),
    ):
        if value not in allowed:
            raise PruneError(f"unknown {name} '{value}' (expected one of {', '.join(allowed)})")
    check_model(model)
    config = model.config
    n_layers = config.num_hidden_layers
    drops = sorted({int(k) for k in contiguous_drops})
    if depth_method == "contiguous" and not drops:
        log.warning(
            "depth_method 'contiguous' without contiguous_drops: no block is scored, depth pruning will ask"
        )
    if any(k < 1 or k >= n_layers for k in drops):
        raise PruneError(f"contiguous block sizes must be between 1 and {n_layers - 1} (got {drops})")
    device = _model_device(model)
    acc = {
        "heads": RowMoments(
            n_layers,
            config.num_attention_heads * (head_dim(config) if head_aggregation == "channel_l2" else 1),
            device,
        ),
        "mlp": RowMoments(n_layers, config.intermediate_size, device),
        "hidden": RowMoments(2 * n_layers, config.hidden_size, device),
        "bi_cos_sum": torch.zeros(n_layers, dtype=torch.float64, device=device),
        "bi_tokens": torch.zeros((), dtype=torch.float64, device=device),
    }
    need_loss = depth_method in ("lm_loss", "contiguous")
    need_kl = depth_method == "contiguous" and contiguous_metric == "kl_to_teacher" and bool(drops)
    multi_pass = need_loss
    stored: list[Tensor] = []
    reference: list[Tensor] = []  # the full model's final hidden states, for KL
    base_loss = torch.zeros((), dtype=torch.float64, device=device)
    loss_tokens = 0
    samples = tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _hooks(model, acc, seq_agg, mlp_site, head_aggregation):
            for batch in as_batches(batches, batch_size):
                batch = batch.to(device)
                if multi_pass:
                    stored.append(batch)
                hidden = final_hidden(
                    model, batch
                )  # the scores need no logits; the loss makes them in chunks
                for key in ("heads", "mlp", "hidden"):
                    acc[key].check_flushed()
                if need_loss:
                    base_loss += _next_token_nll(model, hidden, batch).to(device)
                    loss_tokens += batch[:, 1:].numel()
                if need_kl:
                    reference.append(hidden)
                del hidden
                samples += batch.shape[0]
                tokens += batch.numel()
        if samples == 0:
            raise PruneError("no calibration batches were given; importance needs at least one sample")
        state = {}
        state.update(acc["heads"].moments.state("heads"))
        state.update(acc["mlp"].moments.state("mlp"))
        state.update(acc["hidden"].moments.state("hidden"))
        state["bi_cos_sum"] = acc["bi_cos_sum"].cpu()
        state["bi_tokens"] = acc["bi_tokens"].cpu()
        if need_loss:
            state["base_loss_sum"] = base_loss.cpu()
            state["loss_tokens"] = torch.tensor(float(loss_tokens), dtype=torch.float64)
        with torch.inference_mode():
            if depth_method == "lm_loss":
                state["lm_loss_sum"] = torch.stack(
                    [_loss_without(model, stored, [i]) for i in range(n_layers)]
                )
            if need_kl:
                state["kl_tokens"] = torch.tensor(float(tokens), dtype=torch.float64)
            for k in drops:
                blocks = [range(s, s + k) for s in range(n_layers - k + 1)]
                if need_kl:
                    state[f"contig_{k}_kl_sum"] = torch.stack(
                        [_kl_without(model, stored, reference, b) for b in blocks]
                    )
                else:
                    state[f"contig_{k}_loss_sum"] = torch.stack(
                        [_loss_without(model, stored, b) for b in blocks]
                    )
    finally:
        model.train(was_training)
    settings = {
        "batch_agg": batch_agg,
        "seq_agg": seq_agg,
        "mlp_site": mlp_site,
        "depth_method": depth_method,
        "contiguous_drops": drops,
        "head_aggregation": head_aggregation,
        "samples": samples,
        "tokens": tokens,
    }
    if depth_method == "contiguous":
        settings["contiguous_metric"] = contiguous_metric
    return scores_from_state(state, settings, shape_of(config))


def _loss_without(model: PreTrainedModel, batches: list[Tensor], layers: Iterable[int]) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    with skip_layers(model, list(layers)):
        for batch in batches:
            total += _lm_loss_sum(model, batch).cpu()
    return total


def _kl_without(
    model: PreTrainedModel, batches: list[Tensor], reference: list[Tensor], layers: Iterable[int]
) -> Tensor:
    """Summed KL(full model || model with `layers` skipped) over every position of `batches` (float64)."""
    total = torch.zeros((), dtype=torch.float64)
    with skip_layers(model, list(layers)):
        for batch, full in zip(batches, reference, strict=True):
            with head_of(model) as head:
                sums = chunked_eval_sums(final_hidden(model, batch), head, batch, full, head)
            total += sums["kl"].cpu()
    return total
