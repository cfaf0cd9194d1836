"""Importance of every prunable unit from forward passes only (Minitron, DESIGN.md section 2).

One calibration pass scores, with hooks and no gradients:
- attention heads: L2 norm over head_dim of each head's slice of the `o_proj` input;
- MLP neurons: the `down_proj` input (after SwiGLU, as Model Optimizer) or the `gate_proj` output
  (the pre-activation X W1^T of the paper), site `gate_up`;
- embedding channels: the outputs of every layer's two RMSNorms, scored per norm and summed over norms;
- depth: Block Importance BI_i = 1 - mean cos(x_i, x_{i+1}) over all tokens.

Activations are reduced first over the sequence (seq_agg) to one vector per sample, then over samples
(batch_agg), each `mean` (of abs), `l2` (norm) or `var` (population variance). The per-sample vectors
are folded into exact streaming moments (count, sum |v|, sum v^2, mean, M2 by Chan's parallel update) in
float64, so memory does not grow with the number of samples, any batch_agg can be read off the same
pass, and scores of two disjoint halves merge into exactly the scores of one pass over both.

Depth by LM loss (`lm_loss`: loss increase when layer i alone is skipped) and contiguous blocks
(`contiguous`: LM loss with layers [s, s+k) skipped, for each requested k) need one extra pass over
the calibration data per candidate.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import PreTrainedModel

from ablate.errors import PruneError
from ablate.models.arch import check_model, decoder_layers, head_dim, shape_of, skip_layers

log = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "l2", "var")
MLP_SITES = ("down_proj_input", "gate_up")
DEPTH_METHODS = ("block_importance", "lm_loss", "contiguous")
METHODS = ("activation", "magnitude", "random")
FORMAT_VERSION = 1
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".torch")


# --- streaming statistics -------------------------------------------------------------------------


def seq_reduce(x: Tensor, how: str) -> Tensor:
    """[B, S, ...] -> [B, ...] over the sequence axis, in float32 or better."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if how == "mean":
        return torch.linalg.vector_norm(x, ord=1, dim=1) / x.shape[1]
    if how == "l2":
        return torch.linalg.vector_norm(x, ord=2, dim=1)
    if how == "var":
        return x.var(dim=1, unbiased=False)
    raise PruneError(f"unknown seq_agg '{how}' (expected one of {', '.join(AGGREGATIONS)})")


class Moments:
    """Exact streaming moments of per-sample vectors v [..shape]: n, sum|v|, sum v^2, mean, M2 (float64)."""

    KEYS = ("n", "abs_sum", "sq_sum", "mean", "m2")

    def __init__(self, shape: Sequence[int], device: torch.device | str = "cpu"):
        opts = {"dtype": torch.float64, "device": device}
        self.n = torch.zeros((), **opts)
        self.abs_sum = torch.zeros(tuple(shape), **opts)
        self.sq_sum = torch.zeros(tuple(shape), **opts)
        self.mean = torch.zeros(tuple(shape), **opts)
        self.m2 = torch.zeros(tuple(shape), **opts)

    def update(self, v: Tensor) -> None:
        """Fold in a batch of per-sample vectors, v [B, ..shape]."""
        v = v.to(torch.float64)
        nb = v.shape[0]
        mean_b = v.mean(0)
        m2_b = (v - mean_b).square().sum(0)
        self._combine(torch.tensor(float(nb), dtype=torch.float64, device=v.device), mean_b, m2_b)
        self.abs_sum += v.abs().sum(0)
        self.sq_sum += v.square().sum(0)

    def _combine(self, nb: Tensor, mean_b: Tensor, m2_b: Tensor) -> None:
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta.square() * (self.n * nb / n)
        self.n = n

    def merge(self, other: Moments) -> Moments:
        out = Moments(self.mean.shape, self.mean.device)
        for key in self.KEYS:
            setattr(out, key, getattr(self, key).clone())
        if float(other.n) == 0:
            return out
        if float(out.n) == 0:
            return other.merge(out)
        out._combine(other.n.to(out.n.device), other.mean.to(out.n.device), other.m2.to(out.n.device))
        out.abs_sum += other.abs_sum.to(out.n.device)
        out.sq_sum += other.sq_sum.to(out.n.device)
        return out

    def finalize(self, batch_agg: str) -> Tensor:
        if float(self.n) == 0:
            raise PruneError("no calibration samples were seen; importance needs at least one batch")
        if batch_agg == "mean":
            out = self.abs_sum / self.n
        elif batch_agg == "l2":
            out = self.sq_sum.sqrt()
        elif batch_agg == "var":
            out = self.m2 / self.n
        else:
            raise PruneError(f"unknown batch_agg '{batch_agg}' (expected one of {', '.join(AGGREGATIONS)})")
        return out.float().cpu()

    def state(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}.{k}": getattr(self, k).detach().cpu() for k in self.KEYS}

    @classmethod
    def from_state(cls, state: dict[str, Tensor], prefix: str) -> Moments:
        out = cls(state[f"{prefix}.mean"].shape)
        for key in cls.KEYS:
            setattr(out, key, state[f"{prefix}.{key}"].to(torch.float64).clone())
        return out


# --- the result -----------------------------------------------------------------------------------


@dataclass
class ImportanceScores:
    """Scores of every prunable unit; higher = more important (keep).

    heads [L, H], mlp [L, F], hidden [D], depth [L] (per-layer score for depth_method; for `contiguous`,
    block importance), contiguous {k: LM loss with layers [s, s+k) dropped, for each start s; lower is
    better}. `state` keeps the raw accumulators of an activation pass so scores merge exactly and can be
    re-read with another batch_agg.
    """

    method: str
    heads: Tensor
    mlp: Tensor
    hidden: Tensor
    depth: Tensor
    settings: dict = field(default_factory=dict)
    shape: dict = field(default_factory=dict)
    contiguous: dict[int, Tensor] = field(default_factory=dict)
    depth_scores: dict[str, Tensor] = field(default_factory=dict)
    state: dict[str, Tensor] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------------

    def summary(self) -> dict:
        return {"method": self.method, **self.settings, "shape": self.shape}

    def check_matches(self, model_or_config) -> None:
        """Refuse scores that were computed for another architecture."""
        config = getattr(model_or_config, "config", model_or_config)
        shape = shape_of(config)
        mismatched = {k: (v, shape.get(k)) for k, v in self.shape.items() if shape.get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: scores {a} vs model {b}" for k, (a, b) in mismatched.items())
            raise PruneError(f"importance scores were computed for another model shape ({detail})")

    # -- combining -------------------------------------------------------------------------------

    def merge(self, other: ImportanceScores) -> ImportanceScores:
        """Scores of the union of two disjoint calibration sets (exact for activation scores)."""
        if self.method != "activation" or other.method != "activation" or not self.state or not other.state:
            raise PruneError("only activation scores with accumulator state can be merged")
        keys = ("seq_agg", "mlp_site", "depth_method", "contiguous_drops")
        if any(self.settings.get(k) != other.settings.get(k) for k in keys) or self.shape != other.shape:
            raise PruneError("cannot merge importance scores computed with different settings or shapes")
        state = {}
        for prefix in _moment_prefixes(self.state):
            state.update(
                Moments.from_state(self.state, prefix)
                .merge(Moments.from_state(other.state, prefix))
                .state(prefix)
            )
        for key, value in self.state.items():
            if key.rsplit(".", 1)[0] not in _moment_prefixes(self.state):
                state[key] = value + other.state[key]
        settings = dict(self.settings)
        for key in ("samples", "tokens"):
            settings[key] = self.settings.get(key, 0) + other.settings.get(key, 0)
        return _finalize(state, settings, self.shape)

    def with_batch_agg(self, batch_agg: str) -> ImportanceScores:
        """The same pass read with another batch aggregation."""
        if not self.state:
            raise PruneError(f"{self.method} scores have no accumulator state to re-aggregate")
        return _finalize(self.state, {**self.settings, "batch_agg": batch_agg}, self.shape)

    # -- files -----------------------------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        out = {"heads": self.heads, "mlp": self.mlp, "hidden": self.hidden, "depth": self.depth}
        out.update({f"contiguous.{k}": v for k, v in self.contiguous.items()})
        out.update({f"depth_scores.{k}": v for k, v in self.depth_scores.items()})
        out.update({f"state.{k}": v for k, v in self.state.items()})
        return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}

    def save(self, path: str | Path) -> Path:
        """Write to `path`: safetensors (with JSON metadata), or a torch file for .pt/.pth/.bin suffixes.

        Written to a temporary file and renamed, so a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_VERSION,
            "method": self.method,
            "settings": self.settings,
            "shape": self.shape,
        }
        tmp = path.with_name(f".{path.name}.tmp")
        if path.suffix in TORCH_SUFFIXES:
            with open(tmp, "wb") as handle:
                torch.save({"meta": meta, "tensors": self.tensors()}, handle)
        else:
            save_file(self.tensors(), str(tmp), metadata={"ablate": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImportanceScores:
        """Read a file written by `save` (the format is recognised from its content)."""
        path = Path(path)
        if not path.is_file():
            raise PruneError(f"importance file '{path}' does not exist")
        try:
            with open(path, "rb") as handle:
                head = handle.read(9)
            if len(head) == 9 and head[8:9] == b"{":
                with safe_open(str(path), framework="pt") as handle:
                    meta = json.loads((handle.metadata() or {})["ablate"])
                tensors = load_file(str(path))
            else:
                with open(path, "rb") as handle:
                    blob = torch.load(handle, weights_only=True)
                meta, tensors = blob["meta"], blob["tensors"]
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise PruneError(
                f"'{path}' is not a readable ablate importance file ({type(exc).__name__}: {exc}); recompute it"
            ) from exc
        if meta.get("format") != FORMAT_VERSION:
            raise PruneError(
                f"'{path}' has importance format {meta.get('format')}, expected {FORMAT_VERSION}"
            )

        def group(prefix: str) -> dict[str, Tensor]:
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

        return cls(
            method=meta["method"],
            heads=tensors["heads"],
            mlp=tensors["mlp"],
            hidden=tensors["hidden"],
            depth=tensors["depth"],
            settings=meta["settings"],
            shape=meta["shape"],
            contiguous={int(k): v for k, v in group("contiguous.").items()},
            depth_scores=group("depth_scores."),
            state=group("state."),
        )


def _moment_prefixes(state: dict[str, Tensor]) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".m2")})


def _finalize(state: dict[str, Tensor], settings: dict, shape: dict) -> ImportanceScores:
    batch_agg = settings["batch_agg"]
    heads = Moments.from_state(state, "heads").finalize(batch_agg)
    mlp = Moments.from_state(state, "mlp").finalize(batch_agg)
    hidden = Moments.from_state(state, "hidden").finalize(batch_agg).sum(0)
    depth_scores = {"block_importance": (1 - state["bi_cos_sum"] / state["bi_tokens"]).float()}
    if "lm_loss_sum" in state:
        base = state["base_loss_sum"] / state["loss_tokens"]
        depth_scores["lm_loss"] = (state["lm_loss_sum"] / state["loss_tokens"] - base).float()
    contiguous = {
        int(k.removeprefix("contig_").removesuffix("_loss_sum")): (v / state["loss_tokens"]).float()
        for k, v in state.items()
        if k.startswith("contig_")
    }
    method = settings["depth_method"]
    depth = depth_scores["lm_loss" if method == "lm_loss" else "block_importance"]
    return ImportanceScores(
        method="activation",
        heads=heads,
        mlp=mlp,
        hidden=hidden,
        depth=depth,
        settings=dict(settings),
        shape=dict(shape),
        contiguous=contiguous,
        depth_scores=depth_scores,
        state=dict(state),
    )


# --- the calibration pass -------------------------------------------------------------------------


def as_batches(batches: Iterable[Tensor] | Tensor, batch_size: int = 8) -> Iterator[Tensor]:
    """A [n, S] tensor is split into batches; an iterable yields its [b, S] (or [S]) tensors."""
    if isinstance(batches, Tensor):
        if batches.dim() == 1:
            batches = batches.unsqueeze(0)
        for start in range(0, len(batches), batch_size):
            yield batches[start : start + batch_size]
        return
    for batch in batches:
        yield batch.unsqueeze(0) if batch.dim() == 1 else batch


def _layer_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _layer_output(output) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _hooks(model: PreTrainedModel, acc: dict, seq_agg: str, mlp_site: str) -> Iterator[None]:
    handles = []
    hd = head_dim(model.config)
    try:
        for i, layer in enumerate(decoder_layers(model)):

            def o_proj_in(module, args, i=i):
                x = args[0]
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


class _RowMoments:
    """Moments [rows, C] updated one row (layer) at a time; the sample count is shared by all rows."""

    def __init__(self, rows: int, width: int, device):
        self.moments = Moments((rows, width), device)
        self.rows = rows
        self._pending: dict[int, Tensor] = {}

    def update_row(self, row: int, v: Tensor) -> None:
        # A model split over devices (accelerate's device_map) reports each layer from its own device.
        self._pending[row] = v.to(self.moments.mean.device)
        if len(self._pending) == self.rows:
            stacked = torch.stack([self._pending[r] for r in range(self.rows)], dim=1)  # [B, rows, C]
            self._pending.clear()
            self.moments.update(stacked)

    def check_flushed(self) -> None:
        if self._pending:
            raise PruneError(f"importance hooks saw {len(self._pending)} of {self.rows} rows in a batch")


def _lm_loss_sum(model: PreTrainedModel, batch: Tensor) -> Tensor:
    logits = model(input_ids=batch, use_cache=False).logits
    return _next_token_nll(logits, batch)


def _next_token_nll(logits: Tensor, batch: Tensor) -> Tensor:
    """Summed next-token NLL: per-token losses in float32, summed in float64."""
    batch = batch.to(logits.device)
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="none")
    return losses.sum(dtype=torch.float64)


def estimate_importance(
    model: PreTrainedModel,
    batches: Iterable[Tensor] | Tensor,
    batch_agg: str = "l2",
    seq_agg: str = "mean",
    mlp_site: str = "down_proj_input",
    depth_method: str = "block_importance",
    contiguous_drops: Sequence[int] = (),
    batch_size: int = 8,
) -> ImportanceScores:
    """Activation importance of heads, MLP neurons, hidden channels and layers from one pass over `batches`.

    `contiguous_drops` lists the block sizes k for which every contiguous block of k layers is scored
    (needed by depth_method="contiguous"); `lm_loss` and `contiguous` take extra passes.
    """
    for name, value, allowed in (
        ("batch_agg", batch_agg, AGGREGATIONS),
        ("seq_agg", seq_agg, AGGREGATIONS),
        ("mlp_site", mlp_site, MLP_SITES),
        ("depth_method", depth_method, DEPTH_METHODS),
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
        "heads": _RowMoments(n_layers, config.num_attention_heads, device),
        "mlp": _RowMoments(n_layers, config.intermediate_size, device),
        "hidden": _RowMoments(2 * n_layers, config.hidden_size, device),
        "bi_cos_sum": torch.zeros(n_layers, dtype=torch.float64, device=device),
        "bi_tokens": torch.zeros((), dtype=torch.float64, device=device),
    }
    need_loss = depth_method in ("lm_loss", "contiguous")
    multi_pass = need_loss
    stored: list[Tensor] = []
    base_loss = torch.zeros((), dtype=torch.float64, device=device)
    loss_tokens = 0
    samples = tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _hooks(model, acc, seq_agg, mlp_site):
            for batch in as_batches(batches, batch_size):
                batch = batch.to(device)
                if multi_pass:
                    stored.append(batch)
                logits = model(input_ids=batch, use_cache=False).logits
                for key in ("heads", "mlp", "hidden"):
                    acc[key].check_flushed()
                if need_loss:
                    base_loss += _next_token_nll(logits, batch).to(device)
                    loss_tokens += batch[:, 1:].numel()
                del logits
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
            for k in drops:
                state[f"contig_{k}_loss_sum"] = torch.stack(
                    [_loss_without(model, stored, range(s, s + k)) for s in range(n_layers - k + 1)]
                )
    finally:
        model.train(was_training)
    settings = {
        "batch_agg": batch_agg,
        "seq_agg": seq_agg,
        "mlp_site": mlp_site,
        "depth_method": depth_method,
        "contiguous_drops": drops,
        "samples": samples,
        "tokens": tokens,
    }
    return _finalize(state, settings, shape_of(config))


def _loss_without(model: PreTrainedModel, batches: list[Tensor], layers: Iterable[int]) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    with skip_layers(model, list(layers)):
        for batch in batches:
            total += _lm_loss_sum(model, batch).cpu()
    return total


# --- baselines ------------------------------------------------------------------------------------


def baseline_importance(model: PreTrainedModel, method: str, seed: int = 0) -> ImportanceScores:
    """Data-free baselines: `random` (seeded uniform scores) or `magnitude` (L2 norm of each unit's weights).

    Magnitude: a head is scored by its q_proj rows and o_proj columns, an MLP neuron by its gate/up rows
    and down_proj column, a hidden channel by every embedding/projection weight that reads or writes it,
    a layer by the norm of its output projections (o_proj, down_proj).
    """
    check_model(model)
    config = model.config
    n_layers, heads, ffn, hidden = (
        config.num_hidden_layers,
        config.num_attention_heads,
        config.intermediate_size,
        config.hidden_size,
    )
    settings = {"seed": seed} if method == "random" else {}
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return ImportanceScores(
            method="random",
            heads=torch.rand(n_layers, heads, generator=gen),
            mlp=torch.rand(n_layers, ffn, generator=gen),
            hidden=torch.rand(hidden, generator=gen),
            depth=torch.rand(n_layers, generator=gen),
            settings=settings,
            shape=shape_of(config),
        )
    if method != "magnitude":
        raise PruneError(f"unknown baseline importance '{method}' (expected random or magnitude)")
    hd = head_dim(config)
    head_sq = torch.zeros(n_layers, heads, dtype=torch.float64)
    mlp_sq = torch.zeros(n_layers, ffn, dtype=torch.float64)
    hidden_sq = torch.zeros(hidden, dtype=torch.float64)
    depth_sq = torch.zeros(n_layers, dtype=torch.float64)

    def sq(w: Tensor, dim: int) -> Tensor:
        return w.detach().double().square().sum(dim).cpu()

    with torch.no_grad():
        base = model.model
        hidden_sq += sq(base.embed_tokens.weight, 0)
        if model.lm_head.weight.data_ptr() != base.embed_tokens.weight.data_ptr():
            hidden_sq += sq(model.lm_head.weight, 0)
        for i, layer in enumerate(decoder_layers(model)):
            attn, mlp = layer.self_attn, layer.mlp
            q = attn.q_proj.weight
            o = attn.o_proj.weight
            head_sq[i] += sq(q, 1).view(heads, hd).sum(1) + sq(o, 0).view(heads, hd).sum(1)
            mlp_sq[i] += sq(mlp.gate_proj.weight, 1) + sq(mlp.up_proj.weight, 1) + sq(mlp.down_proj.weight, 0)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                hidden_sq += sq(lin.weight, 0)
            for lin in (attn.o_proj, mlp.down_proj):
                hidden_sq += sq(lin.weight, 1)
            depth_sq[i] = sq(o, 0).sum() + sq(mlp.down_proj.weight, 0).sum()
    return ImportanceScores(
        method="magnitude",
        heads=head_sq.sqrt().float(),
        mlp=mlp_sq.sqrt().float(),
        hidden=hidden_sq.sqrt().float(),
        depth=depth_sq.sqrt().float(),
        settings=settings,
        shape=shape_of(config),
    )


def compute_importance(
    model: PreTrainedModel,
    method: str = "activation",
    batches: Iterable[Tensor] | Tensor | None = None,
    seed: int = 0,
    **activation_options,
) -> ImportanceScores:
    """Dispatch on method: activation (needs calibration batches), magnitude or random."""
    if method not in METHODS:
        raise PruneError(f"unknown importance method '{method}' (expected one of {', '.join(METHODS)})")
    if method == "activation":
        if batches is None:
            raise PruneError("activation importance needs calibration batches")
        return estimate_importance(model, batches, **activation_options)
    return baseline_importance(model, method, seed)


def finite_or_raise(scores: ImportanceScores) -> ImportanceScores:
    """Refuse scores with NaN/inf (a broken model or fp16 overflow) rather than prune on garbage."""
    for name, tensor in scores.tensors().items():
        if name.startswith("state."):
            continue
        if not torch.isfinite(tensor).all():
            raise PruneError(f"importance '{name}' has non-finite values; the model's activations overflowed")
    return scores


__all__ = [
    "AGGREGATIONS",
    "DEPTH_METHODS",
    "METHODS",
    "MLP_SITES",
    "ImportanceScores",
    "Moments",
    "baseline_importance",
    "compute_importance",
    "estimate_importance",
    "finite_or_raise",
]
