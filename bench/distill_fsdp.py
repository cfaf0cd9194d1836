"""One FSDP2 worker against the plain single-process trainer: throughput, peak memory, same losses.

Runs ablate's `train()` twice in one process on the same models, data and seed: strategy `single`, then
strategy `fsdp` in a one-worker process group (NCCL on CUDA, gloo on CPU), the path a sharded trial's
workers take. Prints JSON: tokens/s (median step after the warm-up), peak GPU memory, and the largest
relative difference between the two loss curves (bf16 autocast: expect ~1e-3, not bit equality).

    python bench/distill_fsdp.py --device cuda --config 1b      # ~1.1B teacher, ~0.7B student, bf16
    python bench/distill_fsdp.py --config tiny                  # CPU smoke run

The run stops after its timed steps (no final checkpoint: writing the optimizer state is not a step).

Measured on one NVIDIA H100 80GB (2026-11-28, `--device cuda --config 1b`: 1.10B teacher, 0.68B student,
seq 2048, global batch 16, micro-batch 4): one process 44,296 tokens/s, peak 31.6 GiB; one FSDP2 worker
39,941 tokens/s (0.90x), peak 28.5 GiB; loss curves within 4.2e-5 relative.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import MistralForCausalLM  # noqa: E402

from ablate.distill.config import TrainConfig  # noqa: E402
from ablate.distill.parallel import Parallel  # noqa: E402
from ablate.distill.train import train  # noqa: E402
from ablate.models.arch import pruned_config  # noqa: E402
from bench.distill_throughput import PRESETS, teacher_config  # noqa: E402


class _Done(Exception):
    pass


def run(strategy: str, args, cfg: TrainConfig, device: torch.device) -> dict:
    t_cfg = teacher_config(args.config)
    s_cfg = pruned_config(t_cfg, PRESETS[args.config][1])
    torch.manual_seed(0)
    with torch.device(device):
        teacher = MistralForCausalLM(t_cfg)
        student = MistralForCausalLM(s_cfg)
    teacher.eval()
    if device.type == "cuda":
        teacher.to(torch.bfloat16)
    data = torch.randint(
        0, t_cfg.vocab_size, (4 * cfg.global_batch, cfg.seq_len), generator=torch.Generator()
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    stamps: list[float] = []
    losses: list[float] = []

    def on_step(metrics) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        losses.append(float(metrics["loss"]))
        if metrics["step"] == args.warmup + args.steps + 1:
            raise _Done

    with tempfile.TemporaryDirectory() as out:
        try:
            train(student, teacher, data, cfg, out, on_step=on_step, parallel=Parallel.current(strategy))
        except _Done:
            pass
    step_s = statistics.median([b - a for a, b in zip(stamps, stamps[1:], strict=False)][args.warmup :])
    report = {
        "strategy": strategy,
        "step_s": step_s,
        "tokens_per_s": cfg.tokens_per_step / step_s,
        "losses": losses,
        "student_params": sum(p.numel() for p in student.parameters()),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
    }
    if device.type == "cuda":
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del student, teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seq-len", type=int, default=None, help="default: 2048 (1b), 128 otherwise")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    seq = args.seq_len or (2048 if args.config == "1b" else 128)
    total_steps = args.warmup + args.steps + 3
    cfg = TrainConfig(
        loss="kld", tokens=total_steps * args.global_batch * seq, global_batch=args.global_batch,
        micro_batch=args.micro_batch, seq_len=seq, lr=1e-5, min_lr=1e-6, warmup_steps=0, checkpoint_every=10**9,
        precision="bf16" if device.type == "cuda" else "fp32", seed=0, device=str(device),
    )  # fmt: skip
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    single = run("single", args, cfg, device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        fsdp = run("fsdp", args, cfg, device)
    finally:
        dist.destroy_process_group()
    diffs = [abs(a - b) / abs(b) for a, b in zip(fsdp["losses"], single["losses"], strict=True)]
    report = {
        "config": args.config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "seq_len": seq,
        "micro_batch": args.micro_batch,
        "global_batch": args.global_batch,
        "tokens_per_step": cfg.tokens_per_step,
        "single": single,
        "fsdp": fsdp,
        "fsdp_over_single_throughput": fsdp["tokens_per_s"] / single["tokens_per_s"],
        "max_relative_loss_difference": max(diffs),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
