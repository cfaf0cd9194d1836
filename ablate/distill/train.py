"""The distillation trainer: one function, `train`, that a CLI command or a Ray Tune trial calls.

What it guarantees:
- Exact token accounting: `steps = ceil(tokens / (global_batch * seq_len))` (ablate.spec.budget); the
  run consumes `steps * global_batch * seq_len` training tokens (a sequence of seq_len tokens counts
  seq_len) and reports both the budget and what it consumed. A budget smaller than one step is an error.
- Deterministic given the seed: data order is a seeded permutation per epoch (the train split is
  covered in epochs when the budget exceeds it); `scratch` initialisation is seeded. The global RNG is
  forked, so a trial leaves torch's RNG as it found it and two trials in one process don't interact.
- Exact resume: checkpoints (model, optimizer, schedule position, RNG, data position, loss history)
  are written atomically to `out_dir/checkpoint.pt` (one process) or `out_dir/checkpoint/` (sharded,
  torch.distributed.checkpoint, when several workers train); calling `train` again with the same
  `out_dir` continues from either, on any number of workers, and produces the same losses as an
  uninterrupted run (bit-identical on CPU for one process).
- Several workers (`parallel`, see ablate.distill.parallel): DDP or FSDP2; each worker trains on its
  own slice of every global batch, so the run's losses equal the single-process run's.
- A non-finite loss or gradient stops the run with a TrainError naming the step; the state of the
  last good step is checkpointed first, the bad update is never applied.
- Teacher under `torch.inference_mode()`; bf16 autocast on CUDA; losses in float32.
- Memory: the LM heads and logit losses run `logit_chunk` positions at a time (never the whole
  micro-batch x vocabulary of logits, ablate.distill.losses), and `activation_checkpointing` recomputes
  each decoder layer in backward; neither changes the losses beyond rounding.
- Thread counts, devices of other tensors and other process-wide settings are the caller's.

The pieces live beside it: config.py (TrainConfig, TrainResult, the LR schedule), data_order.py,
models.py (student/teacher checks, the scratch re-initialisation), layer_map.py (kld+intermediate),
checkpoint.py (format, fingerprint, atomic writes). This module is the run itself: `_Run.setup`, one
optimizer step (`_Run.step`) and its checkpoint (`_Run.save`), driven by `train`'s loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ablate.distill.checkpoint import (
    CHECKPOINT,
    RESULT,
    atomic_write_json,
    check_resumable,
    checkpoint_meta,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from ablate.distill.compiled import compile_layers, uncompile_layers
from ablate.distill.config import TrainConfig, TrainResult, lr_at
from ablate.distill.data_order import DataOrder
from ablate.distill.layer_map import Capture, resolve_layer_map
from ablate.distill.logits import (
    disable_checkpointing,
    enable_checkpointing,
    final_hidden,
    head_loss,
    head_of,
)
from ablate.distill.losses import (
    HiddenProjection,
    chunked_cross_entropy,
    chunked_kl_loss,
    combine_dynamic,
    intermediate_loss,
)
from ablate.distill.models import check_compatible, kept_indices, pruning_metadata, reinitialise
from ablate.distill.parallel import (
    Parallel,
    clip_gradient_groups,
    grad_norm_value,
    load_sharded,
    load_training_state,
    on_meta,
)
from ablate.errors import TrainError

__all__ = ["TrainConfig", "TrainResult", "train"]  # the config and result are part of train's signature

log = logging.getLogger(__name__)


def train(
    student: nn.Module,
    teacher: nn.Module | None,
    train_batches: Tensor,
    config: TrainConfig,
    out_dir: str | Path,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
    parallel: Parallel | None = None,
) -> TrainResult:
    """Train `student` in place on `train_batches` ([n, seq_len] token ids) and return what happened.

    loss 'kld' / 'kld+intermediate' distil from `teacher`; 'ce' trains on the data alone (also used for
    teacher correction, with the teacher as `student`); 'scratch' re-initialises the student (seeded)
    and trains it with 'ce'. `on_step(metrics)` gets step, steps, loss, lr, tokens, grad_norm and
    the loss components after every step (raise inside it to stop: the next call resumes from the
    last checkpoint). `eval_fn(student) -> metrics` runs every `eval_every` steps and at the end; its
    results go to `on_step` (prefixed `eval_`) and `TrainResult.evals`.

    With `parallel` (one per worker, from `Parallel.current`), every worker calls `train` with the same
    arguments and whole `train_batches`; `on_step` and `eval_fn` run on every worker (with the same
    values), the result file is written by rank 0. Under FSDP the student stays sharded: gather it with
    `ablate.distill.parallel.full_model_state` to save it.
    """
    config.validate()
    parallel = parallel or Parallel()
    _check_inputs(config, parallel, train_batches, eval_every)
    check_compatible(student, teacher, config)
    if not config.needs_teacher:
        teacher = None
    run = _Run(student, teacher, train_batches, config, Path(out_dir), parallel)
    with torch.random.fork_rng(devices=run.rng_devices):
        run.setup()
        try:
            for step in range(run.start_step, run.total):
                metrics = run.step(step)
                done = step + 1
                if eval_fn is not None and (done == run.total or (eval_every and done % eval_every == 0)):
                    metrics.update({f"eval_{k}": v for k, v in run.evaluate(eval_fn, done).items()})
                if done == run.total or done % config.checkpoint_every == 0:
                    run.save(done)
                if on_step is not None:
                    metrics["tokens_per_s"] = run.tokens_per_s(done)
                    on_step(dict(metrics))
        finally:
            run.release()
    return run.finish()


def _check_inputs(
    config: TrainConfig, parallel: Parallel, train_batches: Tensor, eval_every: int | None
) -> None:
    """Refuse arguments the run cannot use, before anything is loaded or written."""
    if parallel.world > 1 and config.global_batch % (parallel.world * config.micro_batch):
        raise TrainError(
            f"global_batch ({config.global_batch}) must be a multiple of workers x micro_batch "
            f"({parallel.world} x {config.micro_batch}), so every worker runs whole micro-batches"
        )
    if (  # a tensor, or a memory-mapped view of token shards (ablate.data.loader.SequenceView)
        not hasattr(train_batches, "shape")
        or train_batches.ndim != 2
        or train_batches.dtype.is_floating_point
    ):
        raise TrainError("train_batches must be an integer tensor of token ids shaped [sequences, seq_len]")
    if train_batches.shape[1] != config.seq_len:
        raise TrainError(
            f"train_batches have sequences of {train_batches.shape[1]} tokens but seq_len is {config.seq_len}; "
            "tokenise the split with the same seq_len"
        )
    if eval_every is not None and eval_every < 0:
        raise TrainError(
            f"eval_every must be a number of steps >= 0 (0 or None: at the end only), got {eval_every}"
        )


def _param_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only (not on norms and biases), each parameter once."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class _Run:
    """One call of `train`: what it trains, where it stands, and the pieces of its loop.

    `__init__` does what needs no RNG (device, checkpoint lookup, layer map, moving the models);
    `setup` runs inside the run's forked RNG; then `step`, `evaluate` and `save` per optimizer step,
    `release` to remove the hooks, and `finish` for the result.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        batches: Tensor,
        config: TrainConfig,
        out: Path,
        parallel: Parallel,
    ):
        self.student, self.batches, self.config, self.out = student, batches, config, out
        self.parallel = parallel
        device = torch.device(config.device) if config.device else next(student.parameters()).device
        if device.type == "meta":  # an FSDP worker's weightless copy: it trains where rank 0's would
            device = (
                torch.device("cuda", torch.cuda.current_device())
                if torch.cuda.is_available()
                else torch.device("cpu")
            )
        self.device = device
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        if self.use_bf16 and device.type != "cuda":
            raise TrainError("precision bf16 needs a CUDA device here; use precision 'fp32' or 'auto' on CPU")
        if config.warmup_steps >= config.steps:
            log.warning(
                "warmup_steps (%d) >= steps (%d): the learning rate never reaches its peak",
                config.warmup_steps,
                config.steps,
            )
        out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = out / CHECKPOINT
        self.total = config.steps
        self.fingerprint = fingerprint(config, batches, student)
        self.ckpt = load_checkpoint(out)
        if self.ckpt is not None:
            check_resumable(self.ckpt, self.fingerprint, out)

        self.layer_map: list[tuple[int, int]] = []
        if config.loss == "kld+intermediate":
            self.layer_map = resolve_layer_map(student, teacher, config.intermediate_layers)
        if not on_meta(student):  # a meta copy (FSDP workers but rank 0) gets its shards when wrapped
            student.to(device)
        if teacher is not None:
            if not on_meta(teacher):
                teacher.to(device)
            teacher.eval()
            if config.compile:  # before FSDP shards it, like the student's (setup)
                compile_layers(teacher)
            teacher = parallel.wrap_teacher(teacher, self.use_bf16, device)
        self.teacher = teacher
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if self.use_bf16 else nullcontext
        )
        self.rng_devices = [device] if device.type == "cuda" else []
        self.history: dict[str, list] = {"loss": [], "lr": [], "metrics": [], "evals": []}
        self.start_step: int = 0
        self.resumed_from: int | None = None
        self.projection: HiddenProjection | None = None  # built in setup (seeded)
        self.s_capture: Capture | None = None
        self.t_capture: Capture | None = None
        self.t_start = time.perf_counter()

    # -- setup ------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Seed, build what the loop trains (projection, wrapped student, optimizer), restore the
        checkpoint if there is one, and hook the layers kld+intermediate matches."""
        config, ckpt, device = self.config, self.ckpt, self.device
        torch.manual_seed(config.seed)
        if (
            config.loss == "scratch" and ckpt is None and not on_meta(self.student)
        ):  # meta: rank 0's, broadcast
            reinitialise(self.student, config.seed)
            self.student.to(device)
        if config.loss == "kld+intermediate":  # seeded: created after manual_seed
            kept_hidden = kept_indices(pruning_metadata(self.student), "kept_hidden")
            self.projection = HiddenProjection(
                self.student.config.hidden_size, self.teacher.config.hidden_size, kept_hidden
            )
            self.projection.to(device)
        if config.activation_checkpointing:  # before wrapping: FSDP and DDP see checkpointed layers
            enable_checkpointing(self.student)
        if config.compile:  # before wrapping too: FSDP shards the compiled layers
            compile_layers(self.student)
        self.model = self.parallel.wrap_student(self.student, device, self.use_bf16)  # what the loop calls
        self.modules: list[nn.Module] = [self.model]
        if self.projection is not None:
            self.modules.append(self.projection)
        fast = {"fused": True} if device.type == "cuda" and self.parallel.strategy != "fsdp" else {}
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.modules, config.weight_decay), lr=config.lr, betas=config.betas, **fast
        )
        if ckpt is not None:
            self._restore(ckpt)
        self.params = [p for m in self.modules for p in m.parameters() if p.requires_grad]
        self.order = DataOrder(config.seed, self.batches.shape[0])
        self.last_saved = self.start_step if ckpt is not None else -1
        if self.layer_map:
            self.s_capture = Capture.norms(self.student, [s for s, _ in self.layer_map])
            self.t_capture = Capture.norms(self.teacher, [t for _, t in self.layer_map])
        self.student.train()
        self.optimizer.zero_grad(set_to_none=True)  # gradients the caller left behind are not ours

    def _restore(self, ckpt: Mapping[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizer, RNG, history and the step it was taken at."""
        if ckpt.get("sharded"):
            load_sharded(self.out, self.model, self.projection, self.optimizer)
        else:
            load_training_state(self.model, self.projection, self.optimizer, ckpt, full=True)
        set_rng_state(ckpt["rng"], self.device)
        self.history = ckpt["history"]
        self.start_step = self.resumed_from = int(ckpt["step"])
        if int(ckpt["data_position"]) != self.start_step * self.config.global_batch:
            raise TrainError(
                f"checkpoint {self.ckpt_path} is inconsistent (data position); delete it to restart"
            )
        log.info("resuming %s from step %d of %d", self.out, self.start_step, self.total)

    # -- one optimizer step -----------------------------------------------------------------------

    def step(self, step: int) -> dict[str, Any]:
        """Optimizer step `step` (0-based) over its global batch; returns the step's metrics."""
        config, parallel = self.config, self.parallel
        lr = lr_at(step, self.total, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        idx = parallel.shard(self.order.indices(step * config.global_batch, config.global_batch))
        batch = self.batches[idx].to(self.device, non_blocking=True)
        sums = torch.zeros(3, device=self.device, dtype=torch.float32)  # loss, logit part, intermediate
        micros = batch.split(config.micro_batch)
        for i, micro in enumerate(micros):
            with self.autocast(), parallel.accumulating(self.model, last=i == len(micros) - 1):
                loss, logit_loss, is_loss = self._losses(micro)
                # Each worker averages its own micro-batches; averaging over workers does the rest.
                (loss / len(micros)).backward()
            sums[0] += loss.detach().float()
            sums[1] += logit_loss.detach().float()
            if is_loss is not None:
                sums[2] += is_loss.detach().float()
        grad_norm = self._gradient_norm()
        sums = parallel.sum(sums)
        values = torch.cat([sums / config.accumulation, grad_norm.reshape(1).float()]).tolist()
        loss_v, logit_v, is_v, norm_v = values
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            self._diverged(step, lr, loss_v, norm_v)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._record(step + 1, lr, loss_v, logit_v, is_v, norm_v)

    def _losses(self, micro: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(loss, its logit part, its intermediate part or None) of one micro-batch; the logits are made
        `logit_chunk` positions at a time, inside each model's forward pass (ablate.distill.logits)."""
        config = self.config
        if self.teacher is None:  # ce, scratch, teacher correction
            loss = head_loss(
                self.model, micro, lambda h, head: chunked_cross_entropy(h, head, micro, config.logit_chunk)
            )
            return loss, loss, None
        t_hidden = None
        with self.parallel.no_grad():
            t_final = final_hidden(self.teacher, micro)
        if self.t_capture is not None:
            # Inference tensors cannot be saved for backward: clone outside the mode.
            t_hidden = [h.clone() for h in self.t_capture.take()]
        with head_of(self.teacher) as t_head:
            logit_loss = head_loss(
                self.model,
                micro,
                lambda h, head: chunked_kl_loss(
                    h, head, t_final, t_head, config.temperature, config.logit_chunk
                ),
            )
        if self.s_capture is None:
            return logit_loss, logit_loss, None
        is_loss = intermediate_loss(self.s_capture.take(), t_hidden, self.projection)
        return combine_dynamic(logit_loss, is_loss), logit_loss, is_loss

    def _gradient_norm(self) -> Tensor:
        """Average the gradients over workers, clip them (when grad_clip is set) and return their norm."""
        self.parallel.average_gradients(self.projection)
        clip = self.config.grad_clip
        if self.parallel.strategy == "fsdp" and self.projection is not None:  # DTensors beside plain tensors
            groups = [[p for p in m.parameters() if p.requires_grad] for m in self.modules]
            grad_norm = clip_gradient_groups(groups, clip)
        elif clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        return grad_norm_value(grad_norm)

    def _diverged(self, step: int, lr: float, loss_v: float, norm_v: float) -> None:
        """Drop the bad update, checkpoint the last good state and stop with a TrainError."""
        self.optimizer.zero_grad(set_to_none=True)
        what = f"loss is {loss_v:.4g} and the gradient norm {norm_v:.4g}"
        if step > self.last_saved:
            self.save(step)  # the weights are still those of the last good step
        kept = f"step {self.last_saved}" if self.last_saved > 0 else "the initial weights"
        raise TrainError(
            f"training diverged at step {step + 1} of {self.total}: the {what} (lr {lr:.3g}); "
            f"the checkpoint of the last good state ({kept}) is kept in {self.ckpt_path}; "
            "lower lr (or warm up longer) and train into a new output directory"
        )

    def _record(
        self, done: int, lr: float, loss_v: float, logit_v: float, is_v: float, norm_v: float
    ) -> dict[str, Any]:
        """Add a finished step to the history; its metrics as `on_step` gets them."""
        self.history["loss"].append(loss_v)
        self.history["lr"].append(lr)
        metrics: dict[str, Any] = {
            "step": done,
            "steps": self.total,
            "loss": loss_v,
            "lr": lr,
            "tokens": done * self.config.tokens_per_step,
            "grad_norm": norm_v,
        }
        if self.config.loss in ("kld", "kld+intermediate"):
            metrics["kl"] = logit_v
        else:
            metrics["ce"] = logit_v
        if self.config.loss == "kld+intermediate":
            metrics["intermediate"] = is_v
        self.history["metrics"].append(dict(metrics))
        return metrics

    # -- around the steps -------------------------------------------------------------------------

    def evaluate(self, eval_fn: Callable[[nn.Module], Mapping[str, float]], step: int) -> dict[str, float]:
        """The caller's held-out metrics of the student after `step` steps (kept in the history). Under
        its own RNG state, so a run trains the same weights whether or not it evaluates on the way."""
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.random.fork_rng(devices=self.rng_devices), self.parallel.no_grad():
                metrics = {k: float(v) for k, v in dict(eval_fn(self.student)).items()}
        finally:
            self.student.train(was_training)
        self.history["evals"].append({"step": step, **metrics})
        return metrics

    def save(self, step: int) -> None:
        """Checkpoint the state after `step` steps."""
        meta = checkpoint_meta(step, self.config, self.fingerprint, self.parallel, self.device, self.history)
        save_checkpoint(self.out, self.parallel, meta, (self.model, self.projection, self.optimizer))
        self.last_saved = step

    def tokens_per_s(self, done: int) -> float:
        """Training tokens per second of this call so far."""
        elapsed = time.perf_counter() - self.t_start
        return (done - self.start_step) * self.config.tokens_per_step / max(elapsed, 1e-9)

    def release(self) -> None:
        """Remove the forward hooks kld+intermediate installed, and the checkpointing and compilation the
        run turned on."""
        for cap in (self.s_capture, self.t_capture):
            if cap is not None:
                cap.remove()
        if self.config.activation_checkpointing:
            disable_checkpointing(self.student)
        if self.config.compile:
            for model in (self.student, self.teacher):
                if model is not None:
                    uncompile_layers(model)

    def finish(self) -> TrainResult:
        """The run's result, written to `out/train_result.json` by rank 0."""
        config, history = self.config, self.history
        wall = time.perf_counter() - self.t_start
        ran = self.total - self.start_step
        result = TrainResult(
            steps=self.total,
            tokens=config.tokens_consumed,
            tokens_budget=config.tokens,
            tokens_per_step=config.tokens_per_step,
            final_loss=history["loss"][-1] if history["loss"] else float("nan"),
            loss_curve=list(history["loss"]),
            lr_curve=list(history["lr"]),
            resumed_from_step=self.resumed_from,
            evals=list(history["evals"]),
            wall_s=wall,
            tokens_per_s=ran * config.tokens_per_step / wall if ran and wall > 0 else 0.0,
            checkpoint=str(self.ckpt_path),
        )
        if self.parallel.is_main:
            atomic_write_json(self.out / RESULT, result.to_dict())
        if config.tokens_consumed != config.tokens:
            log.info(
                "budget %d tokens -> %d steps of %d tokens = %d tokens consumed",
                config.tokens,
                self.total,
                config.tokens_per_step,
                config.tokens_consumed,
            )
        return result
