"""Peak memory and time of one distillation step: today's whole-logits losses against chunked logit
losses, and chunked losses with activation checkpointing, beside the plan's estimate for the same shapes.

A Mistral-NeMo-shaped pair narrowed to fit a CPU: the vocabulary (131,072) and sequence length (2048)
of Mistral NeMo, a few narrow layers, so that, as at the recipe's scale, the logits dominate a step.
Each setting's memory is measured in a fresh subprocess (its own peak): build the models, one warm-up
step (which also creates the AdamW state), then reset the peak-RSS mark (Linux /proc/self/clear_refs)
and run the measured step. Step times come from one more subprocess that runs the three settings in
turn, round after round, on the same models (so load from other processes slows them alike). Every step is the trainer's own (`_Run.step`: losses, backward, clipping, AdamW); only
the loss function differs for `today` (the whole-logits code the trainer used before chunking).

Prints JSON: per setting the peak RSS of the measured steps, the same above the process's footprint
after importing torch and transformers (what the estimate counts), the median step time, the first
loss, and the plan's estimate (ablate.plan.memory, precision fp32 as on this CPU).

    python bench/distill_memory.py                 # all three settings, about 6 minutes on 2 cores
    python bench/distill_memory.py --seq-len 512 --layers 2 --rounds 1

Measured (2026-11-30, 2 shared CPU cores, load ~5; defaults: vocab 131,072, seq 2048, 4 layers, teacher
hidden 256 / 70.1M params, student hidden 192 / 52.0M params, fp32), peak RSS of one step / above the
imports / plan's estimate / median step time:
  today                  8.41 GiB / 8.16 / 7.64 GiB / 29.4 s
  chunked                2.37 GiB / 2.12 / 1.95 GiB / 24.2 s   (0.28x today's peak, 0.82x its time)
  chunked+checkpointing  2.30 GiB / 2.05 / 1.88 GiB / 26.3 s   (0.27x, 0.89x)
Step times on this loaded machine vary by +-30% between runs; the interleaving keeps the ratios fair.
Since then the plan's activation terms were fitted to H200 measurements (bench/distill_fsdp.py); for these
shapes its estimates are now 7.70 / 2.01 / 2.02 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {  # name -> (logit_chunk, activation_checkpointing); None: today's whole-logits losses
    "today": (None, False),
    "chunked": ("auto", False),
    "chunked+checkpointing": ("auto", True),
}


def _rss(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _today_losses(run, micro):
    """The trainer's loss before chunking (ablate 94352c6): both models' whole logits."""
    import torch  # noqa: F401

    from ablate.distill.losses import cross_entropy_loss, kl_div_loss

    with run.parallel.no_grad():
        t_out = run.teacher(input_ids=micro, use_cache=False)
    t_logits = t_out.logits.clone()
    del t_out
    s_logits = run.model(input_ids=micro, use_cache=False).logits
    if run.config.loss in ("ce", "scratch"):
        loss = cross_entropy_loss(s_logits, micro)
        return loss, loss, None
    loss = kl_div_loss(s_logits, t_logits, run.config.temperature)
    return loss, loss, None


def _build(args, chunk, ckpt, steps: int):
    """The pair, data and the trainer's run for one setting (the run set up, nothing trained)."""
    import torch
    from transformers import MistralForCausalLM

    from ablate.distill.config import TrainConfig
    from ablate.distill.parallel import Parallel
    from ablate.distill.train import _Run
    from ablate.models.arch import pruned_config

    t_cfg = teacher_config(args)
    s_cfg = pruned_config(t_cfg, {"hidden_size": args.student_hidden, "intermediate_size": args.student_ffn})
    torch.manual_seed(0)
    teacher, student = MistralForCausalLM(t_cfg), MistralForCausalLM(s_cfg)
    data = torch.randint(
        0, t_cfg.vocab_size, (steps, args.seq_len), generator=torch.Generator().manual_seed(0)
    )
    config = TrainConfig(
        loss="kld", tokens=steps * args.seq_len, global_batch=1, micro_batch=1, seq_len=args.seq_len,
        lr=1e-4, min_lr=1e-5, checkpoint_every=10**6, precision="fp32",
        logit_chunk=chunk or "auto", activation_checkpointing=ckpt,
    )  # fmt: skip
    out = tempfile.mkdtemp()
    run = _Run(student, teacher, data, config, Path(out), Parallel())
    run.setup()
    chunked_losses = run._losses
    if chunk is None:
        run._losses = lambda micro: _today_losses(run, micro)
    return run, student, teacher, chunked_losses


def child(args) -> dict:
    """Peak memory of one setting in this (fresh) process."""
    import torch
    import transformers  # noqa: F401 - counted in the process's footprint, not the step's

    import ablate.distill.train  # noqa: F401

    torch.set_num_threads(args.threads)
    imported = _rss("VmRSS")
    chunk, ckpt = SETTINGS[args.setting]
    run, student, teacher, _ = _build(args, chunk, ckpt, 2)
    losses = [run.step(0)["loss"]]  # warm-up: allocator pools, AdamW state
    before = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    losses.append(run.step(1)["loss"])
    peak = _rss("VmHWM")
    run.release()
    return {
        "setting": args.setting,
        "peak_rss_gib": peak / 2**30,
        "peak_above_imports_gib": (peak - imported) / 2**30,
        "rss_before_step_gib": before / 2**30,
        "first_loss": losses[0],
        "student_params": sum(p.numel() for p in student.parameters()),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
    }


def timing(args) -> dict:
    """Step times of the three settings in one process, interleaved round by round (other processes on
    the machine slow every setting alike), on the same models: median seconds per setting."""
    import torch

    from ablate.distill.logits import disable_checkpointing, enable_checkpointing

    torch.set_num_threads(args.threads)
    rounds = args.rounds + 1
    run, student, _, chunked_losses = _build(args, "auto", False, len(SETTINGS) * rounds)
    today_losses = lambda micro: _today_losses(run, micro)  # noqa: E731
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    step = 0
    for r in range(rounds):
        for name, (chunk, ckpt) in SETTINGS.items():
            run._losses = chunked_losses if chunk else today_losses
            if ckpt:
                enable_checkpointing(student)
            t0 = time.perf_counter()
            run.step(step)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
            if ckpt:
                disable_checkpointing(student)
            step += 1
    return {name: statistics.median(t) for name, t in times.items()}


def teacher_config(args):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=8, num_key_value_heads=2, head_dim=args.hidden // 8, max_position_embeddings=args.seq_len,
        sliding_window=None, tie_word_embeddings=False, architectures=["MistralForCausalLM"],
    )  # fmt: skip


def estimate(args, facts: dict, chunk, ckpt) -> dict:
    from ablate.plan.memory import GIB, estimate_memory

    m = estimate_memory(
        student_params=facts["student_params"], teacher_params=facts["teacher_params"], layers=args.layers,
        hidden=args.student_hidden, vocab=args.vocab, seq_len=args.seq_len, micro_batch=1, needs_teacher=True,
        workers=1, strategy="single", teacher_hidden=args.hidden, teacher_layers=args.layers,
        logit_chunk=chunk, activation_checkpointing=ckpt, precision="fp32", device_type="cpu",
    )  # fmt: skip
    return {"total_gib": m.total_bytes / GIB, "terms_gib": {t["term"]: t["gib"] for t in m.terms}}


def _subprocess(*extra: str) -> dict:
    """This script in a fresh interpreter with the same arguments plus `extra`: its JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, *sys.argv[1:], *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), help=argparse.SUPPRESS)  # the child's
    ap.add_argument("--vocab", type=int, default=131_072)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256, help="teacher hidden size (student: --student-hidden)")
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--student-hidden", type=int, default=192)
    ap.add_argument("--student-ffn", type=int, default=512)
    ap.add_argument(
        "--rounds", type=int, default=3, help="timed rounds (one step of each setting) after a warm-up"
    )
    ap.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)  # the timing child
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.setting or args.timing:
        print(json.dumps(child(args) if args.setting else timing(args)))
        return
    results = {}
    for name, (chunk, ckpt) in SETTINGS.items():
        facts = _subprocess("--setting", name)
        facts["estimate"] = estimate(args, facts, chunk, ckpt)
        results[name] = facts
    for name, seconds in _subprocess("--timing").items():
        results[name]["step_s"] = seconds
    today = results["today"]
    for facts in results.values():
        facts["peak_vs_today"] = facts["peak_rss_gib"] / today["peak_rss_gib"]
        facts["time_vs_today"] = facts["step_s"] / today["step_s"]
    shape = {
        k: getattr(args, k)
        for k in ("vocab", "seq_len", "layers", "hidden", "ffn", "student_hidden", "student_ffn")
    }
    print(json.dumps({"shape": shape, "threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
