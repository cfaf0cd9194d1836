"""Distillation at the recipe's sequence length and vocabulary on one GPU: throughput, MFU and peak memory
against the plan's estimate, for the single-process trainer and one FSDP2 worker, with and without
activation checkpointing and torch.compile of the decoder layers.

Runs ablate's `train()` once per variant, in one process, on fresh models built from the same seed, with
the same data: the path a sharded trial's workers take (a one-worker process group: NCCL on CUDA, gloo on
CPU). Variants (`--variants`, comma-separated, run in the order given until `--budget-s` is spent):

    single          strategy single, logits in chunks (`distill.logit_chunk: auto`)
    fsdp            strategy fsdp (one worker), chunked logits
    fsdp+ckpt       ... with `distill.activation_checkpointing: true`
    fsdp+compile    ... with every decoder layer of student and teacher compiled (torch.compile)
    fsdp+ckpt+compile

Each variant reports tokens/s (median step after the warm-up), MFU (model FLOPs: 2 N_teacher + 6 N_student
per token for the matrix products plus causal attention, against the GPU's dense bf16 peak), peak GPU
memory (`torch.cuda.max_memory_allocated`) beside the plan's estimate for the same shapes
(`ablate.plan.memory.estimate_memory`), and the largest relative difference of its loss curve from the
first variant's (bf16 autocast: expect ~1e-3, not bit equality). JSON goes to stdout and, after every
variant, to `--out`.

    python bench/distill_fsdp.py --device cuda --config 1b --seq-len 8192 --vocab 131072 --micro-batch 2
    python bench/distill_fsdp.py --config tiny                  # CPU smoke run

The run stops after its timed steps (no final checkpoint: writing the optimizer state is not a step).

Measured on one NVIDIA H200 (2026-11-30, torch 2.11, transformers 5.17; `--config 1b --vocab 131072`:
1.51B teacher, 0.98B student, global batch 16; MFU against 989 TFLOP/s; peak = max_memory_allocated):

    seq x micro  variant                     tokens/s   MFU    peak GiB  plan GiB
    8192 x 4     fsdp                          30,416  28.6%     62.9      62.9
    8192 x 4     fsdp+compile                  35,195  33.1%     50.9      62.9 (compile not modelled)
    8192 x 4     fsdp+ckpt                     27,119  25.5%     30.2      34.0
    8192 x 4     fsdp+ckpt+compile             31,589  29.7%     36.3      34.0
    8192 x 4     single                        29,711  28.0%     83.4      94.6
    8192 x 4     fsdp+compile, logit_chunk 4096 41,924  39.5%     61.7      72.3
    4096 x 2     fsdp (vocabulary 32,000)      45,643  31.9%     24.0      24.2
    4096 x 2     fsdp+ckpt (32,000)            37,325  26.1%     19.4      17.0
    4096 x 2     single (32,000)               45,490  31.8%     35.9      31.9

Loss curves of all variants agree within 3e-5 relative. The plan's columns use ablate.plan.memory's
activation terms, which were fitted to these measurements; `logit_chunk: auto` was 256 positions here.
Since then the plan models compiled layers (fitted to the three compile rows: 51.7, 36.2 and 61.1 GiB),
and `auto` on a GPU is 2 GiB of fp32 logits per chunk (4096 positions at this vocabulary). On one H100 80GB (2026-11-28, seq 2048,
vocabulary 32,000, micro-batch 4): one process 44,296 tokens/s, peak 31.6 GiB; one FSDP2 worker 39,941
tokens/s (0.90x), peak 28.5 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import MistralForCausalLM  # noqa: E402

from ablate.distill.config import TrainConfig  # noqa: E402
from ablate.distill.parallel import Parallel  # noqa: E402
from ablate.distill.train import train  # noqa: E402
from ablate.models.arch import pruned_config  # noqa: E402
from ablate.plan.memory import GIB, estimate_memory  # noqa: E402
from bench.distill_throughput import (  # noqa: E402
    PEAK_BF16_TFLOPS,
    PRESETS,
    attention_flops_fwd,
    matmul_params,
    teacher_config,
)

VARIANTS = ("single", "fsdp", "fsdp+ckpt", "fsdp+compile", "fsdp+ckpt+compile")


class _Done(Exception):
    pass


def _models(args, device: torch.device):
    t_cfg = teacher_config(args.config)
    if args.vocab:
        t_cfg.vocab_size = args.vocab
    s_cfg = pruned_config(t_cfg, PRESETS[args.config][1])
    torch.manual_seed(0)
    with torch.device(device):
        teacher = MistralForCausalLM(t_cfg)
        student = MistralForCausalLM(s_cfg)
    teacher.eval()
    if device.type == "cuda":
        teacher.to(torch.bfloat16)
    return student, teacher


def _flops_per_token(student, teacher, seq: int) -> float:
    return (
        2 * matmul_params(teacher)
        + 6 * matmul_params(student)
        + attention_flops_fwd(teacher.config, seq)
        + 3 * attention_flops_fwd(student.config, seq)
    )


def _peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _plan_estimate(student, teacher, cfg: TrainConfig, strategy: str, args) -> dict:
    m = estimate_memory(
        student_params=sum(p.numel() for p in student.parameters()),
        teacher_params=sum(p.numel() for p in teacher.parameters()),
        layers=student.config.num_hidden_layers, hidden=student.config.hidden_size,
        vocab=student.config.vocab_size, seq_len=cfg.seq_len, micro_batch=cfg.micro_batch, needs_teacher=True,
        workers=1, strategy=strategy, gpu=args.gpu, teacher_hidden=teacher.config.hidden_size,
        teacher_layers=teacher.config.num_hidden_layers, logit_chunk=cfg.logit_chunk,
        activation_checkpointing=cfg.activation_checkpointing, compile=cfg.compile,
        precision="bf16" if cfg.precision == "bf16" else "fp32", device_type=args.device,
    )  # fmt: skip
    return {"total_gib": m.total_bytes / GIB, "terms_gib": {t["term"]: t["bytes"] / GIB for t in m.terms}}


def run(variant: str, args, base: TrainConfig, device: torch.device, data: torch.Tensor) -> dict:
    strategy = variant.split("+")[0]
    cfg = TrainConfig(**{**base.__dict__})
    cfg.activation_checkpointing = "ckpt" in variant
    cfg.compile = "compile" in variant  # the trainer's own (distill.compile): each decoder layer, before FSDP
    student, teacher = _models(args, device)
    plan = _plan_estimate(student, teacher, cfg, strategy, args)
    flops = _flops_per_token(student, teacher, cfg.seq_len)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    stamps: list[float] = []
    losses: list[float] = []
    t0 = time.perf_counter()

    def on_step(metrics) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        losses.append(float(metrics["loss"]))
        print(
            f"  {variant} step {metrics['step']} loss {losses[-1]:.4f} {stamps[-1] - t0:.1f}s",
            file=sys.stderr,
        )
        if metrics["step"] == args.warmup + args.steps + 1:
            raise _Done

    with tempfile.TemporaryDirectory() as out:
        try:
            train(student, teacher, data, cfg, out, on_step=on_step, parallel=Parallel.current(strategy))
        except _Done:
            pass
    step_s = statistics.median([b - a for a, b in zip(stamps, stamps[1:], strict=False)][args.warmup :])
    tokens_per_s = cfg.tokens_per_step / step_s
    peak = _peak_tflops(device, args.peak_tflops)
    report = {
        "variant": variant,
        "step_s": step_s,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops / (peak * 1e12) if peak else None,
        "first_step_s": stamps[0] - t0,
        "losses": losses,
        "logit_chunk": cfg.logit_chunk,
        "activation_checkpointing": cfg.activation_checkpointing,
        "plan_estimate": plan,
        "student_params": sum(p.numel() for p in student.parameters()),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
    }
    if device.type == "cuda":
        measured = torch.cuda.max_memory_allocated(device) / 2**30
        report["peak_memory_gib"] = measured
        report["plan_over_measured"] = plan["total_gib"] / measured
    del student, teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=None, help="default: the preset's")
    ap.add_argument("--seq-len", type=int, default=None, help="default: 2048 (1b), 128 otherwise")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--logit-chunk", default="auto", help="distill.logit_chunk: positions per chunk, or auto")
    ap.add_argument("--variants", default="single,fsdp", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument(
        "--gpu", default="h100-80gb", help="the plan's GPU name for the estimate (h200-141gb ...)"
    )
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU)"
    )
    ap.add_argument("--budget-s", type=float, default=None, help="start no variant after this many seconds")
    ap.add_argument("--out", default=None, help="also write the JSON here after every variant")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown} (expected some of {', '.join(VARIANTS)})")

    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    seq = args.seq_len or (2048 if args.config == "1b" else 128)
    total_steps = args.warmup + args.steps + 3
    base = TrainConfig(
        loss="kld", tokens=total_steps * args.global_batch * seq, global_batch=args.global_batch,
        micro_batch=args.micro_batch, seq_len=seq, lr=1e-5, min_lr=1e-6, warmup_steps=0, checkpoint_every=10**9,
        precision="bf16" if device.type == "cuda" else "fp32", seed=0, device=str(device),
        logit_chunk=args.logit_chunk if args.logit_chunk == "auto" else int(args.logit_chunk),
    )  # fmt: skip
    vocab = args.vocab or teacher_config(args.config).vocab_size
    data = torch.randint(0, vocab, (4 * base.global_batch, seq), generator=torch.Generator().manual_seed(0))
    report: dict = {
        "config": args.config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "seq_len": seq,
        "vocab": vocab,
        "micro_batch": args.micro_batch,
        "global_batch": args.global_batch,
        "tokens_per_step": base.tokens_per_step,
        "logit_chunk": base.logit_chunk,
        "variants": {},
        "skipped": {},
    }
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        for variant in variants:
            if args.budget_s and time.perf_counter() - started > args.budget_s:
                report["skipped"][variant] = f"time budget of {args.budget_s:.0f}s spent"
                continue
            try:
                report["variants"][variant] = run(variant, args, base, device, data)
            except (
                Exception
            ) as e:  # one variant's failure (an OOM, a compile error) is a finding, not the end
                report["variants"][variant] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                traceback.print_exc()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            _summarise(report)
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=2))
    finally:
        dist.destroy_process_group()
    report["seconds"] = time.perf_counter() - started
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


def _summarise(report: dict) -> None:
    """Loss curves and throughput of every variant against the first one that ran."""
    done = {k: v for k, v in report["variants"].items() if "losses" in v}
    if not done:
        return
    first_name, first = next(iter(done.items()))
    for v in done.values():
        v["max_relative_loss_difference_vs_" + first_name] = max(
            abs(a - b) / abs(b) for a, b in zip(v["losses"], first["losses"], strict=False)
        )
        v["throughput_vs_" + first_name] = v["tokens_per_s"] / first["tokens_per_s"]


if __name__ == "__main__":
    main()
