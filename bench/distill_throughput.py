"""Throughput of ablate's distillation step against the sum of its parts, measured in the same run.

Parts (each timed alone, same models, same micro-batches): teacher forward, student forward+backward
with the loss, optimizer step. One global step costs accumulation x (teacher + student) + optimizer;
ablate's `train()` loop (data order, logit copies, clipping, the per-step sync, metrics) must stay
within 10% of that. Prints JSON.

    python bench/distill_throughput.py --config small                      # CPU, a few minutes at most
    python bench/distill_throughput.py --device cuda --dtype bf16 --config 1b    # ~1.1B teacher, ~0.6B student

Random weights: throughput does not depend on them. On CUDA the teacher is cast to bf16 (it is only
ever run forward) and the student keeps fp32 master weights under bf16 autocast, as in `train()`.
MFU counts model FLOPs only: 2 N_teacher + 6 N_student per token for the matrix products
(N without the input embedding) plus causal attention (2 x seq x heads x head_dim per layer and token
forward, x3 for forward+backward), against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import MistralConfig, MistralForCausalLM  # noqa: E402

from ablate.distill.config import TrainConfig  # noqa: E402
from ablate.distill.losses import cross_entropy_loss, kl_div_loss  # noqa: E402
from ablate.distill.train import train  # noqa: E402
from ablate.models.arch import pruned_config  # noqa: E402
from ablate.models.registry import tiny_mistral_config  # noqa: E402

# name: (teacher config kwargs, student target)
PRESETS = {
    "tiny": (None, {"hidden_size": 48, "intermediate_size": 96}),
    "small": (
        dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, head_dim=32, vocab_size=8192),
        {"hidden_size": 192, "intermediate_size": 512},
    ),
    "1b": (
        dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, head_dim=64, vocab_size=32000),
        {"hidden_size": 1536, "intermediate_size": 6144},
    ),
}  # fmt: skip
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def teacher_config(name: str) -> MistralConfig:
    kwargs, _ = PRESETS[name]
    if kwargs is None:
        return tiny_mistral_config()
    return MistralConfig(
        **kwargs, max_position_embeddings=8192, sliding_window=None, tie_word_embeddings=False,
        architectures=["MistralForCausalLM"],
    )  # fmt: skip


def matmul_params(model: torch.nn.Module) -> int:
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight is emb
    return total if tied else total - emb.numel()


def attention_flops_fwd(config, seq: int) -> float:
    """Causal QK^T and AV per token, forward: 2 matmuls x 2 FLOPs x seq/2 x heads x head_dim per layer."""
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2.0 * seq * config.num_attention_heads * hd * config.num_hidden_layers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


class Parts:
    """The step's parts, timed one micro-batch at a time on the run's own models."""

    def __init__(self, student, teacher, cfg: TrainConfig, batch, device, autocast):
        self.student, self.teacher, self.cfg, self.device, self.autocast = (
            student,
            teacher,
            cfg,
            device,
            autocast,
        )
        self.micro = batch[: cfg.micro_batch]
        # A separate optimizer of the same kind, so that timing it leaves train()'s state alone.
        self.optimizer = torch.optim.AdamW(
            student.parameters(),
            lr=1e-9,
            betas=cfg.betas,
            fused=device.type == "cuda",
            weight_decay=cfg.weight_decay,
        )
        self.t_logits = self.teacher_forward().clone() if teacher is not None else None
        self.samples: list[dict[str, float]] = []

    def teacher_forward(self):
        with torch.inference_mode(), self.autocast():
            return self.teacher(input_ids=self.micro, use_cache=False).logits

    def student_step(self) -> None:
        with self.autocast():
            logits = self.student(input_ids=self.micro, use_cache=False).logits
            if self.t_logits is None:
                loss = cross_entropy_loss(logits, self.micro)
            else:
                loss = kl_div_loss(logits, self.t_logits, self.cfg.temperature)
        (loss / self.cfg.accumulation).backward()

    def measure(self) -> None:
        """One sample of each part; leaves no gradients behind."""
        teacher_s = timed(self.teacher_forward, self.device) if self.teacher is not None else 0.0
        student_s = timed(self.student_step, self.device)
        optimizer_s = timed(self.optimizer.step, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        self.samples.append({"teacher_forward_s": teacher_s, "student_forward_backward_s": student_s,
                             "optimizer_step_s": optimizer_s})  # fmt: skip

    def summary(self, skip: int) -> dict[str, float]:
        samples = self.samples[skip:] or self.samples
        parts = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
        parts["step_sum_s"] = (
            self.cfg.accumulation * (parts["teacher_forward_s"] + parts["student_forward_backward_s"])
            + parts["optimizer_step_s"]
        )
        return parts


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(PRESETS), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--loss", choices=["kld", "ce"], default="kld")
    ap.add_argument("--seq-len", type=int, default=None, help="default: 128 (tiny/small), 2048 (1b)")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=None, help="default: 2 micro-batches (CPU), 8 (CUDA)")
    ap.add_argument("--steps", type=int, default=8, help="training steps timed (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2, help="training steps not timed")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU)"
    )
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.dtype == "bf16" and device.type != "cuda":
        ap.error("--dtype bf16 needs --device cuda (train() autocasts to bf16 on CUDA only)")
    seq = args.seq_len or (2048 if args.config == "1b" else 128)
    global_batch = args.global_batch or args.micro_batch * (8 if device.type == "cuda" else 2)
    cfg = TrainConfig(
        loss=args.loss, tokens=(args.warmup + args.steps + 2) * global_batch * seq, global_batch=global_batch,
        micro_batch=args.micro_batch, seq_len=seq, lr=1e-5, min_lr=1e-6, warmup_steps=0, checkpoint_every=10**9,
        precision="bf16" if args.dtype == "bf16" else "fp32", seed=0,
    )  # fmt: skip
    cfg.validate()

    t_cfg = teacher_config(args.config)
    s_cfg = pruned_config(t_cfg, PRESETS[args.config][1])
    torch.manual_seed(0)
    with torch.device(device):
        teacher = MistralForCausalLM(t_cfg) if args.loss == "kld" else None
        student = MistralForCausalLM(s_cfg)
    if teacher is not None:
        teacher.eval()
        if args.dtype == "bf16":
            teacher.to(torch.bfloat16)
    data = torch.randint(0, t_cfg.vocab_size, (max(64, 4 * global_batch), seq), generator=torch.Generator())

    use_bf16 = args.dtype == "bf16"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16)

    parts = Parts(student, teacher, cfg, data[:global_batch].to(device), device, autocast)
    # Interleaved: after each training step (inside on_step) one sample of every part, so that both
    # see the same machine state; a step's time runs from the end of one on_step to the next call.
    entered: list[float] = []
    left: list[float] = []

    def on_step(_metrics) -> None:
        entered.append(time.perf_counter())
        parts.measure()
        left.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        train(student, teacher, data, cfg, out, on_step=on_step)
    # Interval k is step k + 2; skip the warm-up steps and the last step (it writes the checkpoint).
    intervals = [b - a for a, b in zip(left, entered[1:], strict=False)][
        args.warmup : args.warmup + args.steps
    ]
    step_s = statistics.median(intervals)
    parts = parts.summary(skip=args.warmup)
    tokens_per_step = cfg.tokens_per_step
    n_s = matmul_params(student)
    flops_per_token = 6.0 * n_s + 3.0 * attention_flops_fwd(s_cfg, seq)
    if teacher is not None:
        flops_per_token += 2.0 * matmul_params(teacher) + attention_flops_fwd(t_cfg, seq)
    achieved = flops_per_token * tokens_per_step / step_s
    peak = args.peak_tflops
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    if peak is None and gpu:
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    report = {
        "config": args.config,
        "device": gpu or "cpu",
        "dtype": args.dtype,
        "loss": args.loss,
        "threads": torch.get_num_threads(),
        "teacher_params": sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0,
        "student_params": sum(p.numel() for p in student.parameters()),
        "seq_len": seq,
        "micro_batch": cfg.micro_batch,
        "global_batch": cfg.global_batch,
        "tokens_per_step": tokens_per_step,
        "timed_steps": len(intervals),
        "train_step_s": step_s,
        "train_tokens_per_s": tokens_per_step / step_s,
        "parts": parts,
        "sum_of_parts_tokens_per_s": tokens_per_step / parts["step_sum_s"],
        "loop_overhead": step_s / parts["step_sum_s"] - 1.0,
        "model_tflops_per_s": achieved / 1e12,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "peak_tflops": peak,
    }
    if device.type == "cuda":
        report["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
