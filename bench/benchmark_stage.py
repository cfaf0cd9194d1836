"""A benchmark stage against lm-eval's own CLI on the same model and task, in one run.

The stage runs lm-eval through its Python API on the model the trial already holds in memory (it was
loaded for the held-out evaluation), so it skips the load the CLI must do. Both sides index lm-eval's
tasks and score every document of the task; the CLI is timed as a subprocess from start to exit,
the stage from the call to `run_benchmarks` to its return (task indexing included, model load excluded:
that is the saving). The two alternate --repeats times and the fastest of each counts. The numbers of both are printed too: they must agree (tests/benchmarks checks 1e-6).

Run: python bench/benchmark_stage.py [--model builtin:smollm2-135m] [--task pydoc_cloze] [--limit N]
Prints JSON.

Measured 2026-11-30 (2 vCPUs, no other job running; SmolLM2-135M fp32, all 122 items, batch 8, 2 runs
each, interleaved): stage 52.61 / 46.85 s, CLI 56.51 / 55.34 s: stage_over_cli 0.847, the same acc
(0.762295...), acc_norm and stderrs. An earlier run that timed the stage while other jobs loaded the
machine and the CLI after they stopped read 3.1x: timings on a shared machine only compare when
interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--task", default="pydoc_cloze")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the fastest counts")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from ablate.benchmarks.harness import run_benchmarks
    from ablate.benchmarks.tasks_index import SHIPPED_TASKS, resolve
    from ablate.models.registry import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(args.model)
    model = model.float()
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "model"
        model.save_pretrained(saved)
        tokenizer.save_pretrained(saved)

        cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
               "--model_args", f"pretrained={saved},dtype=float32", "--tasks", args.task,
               "--include_path", str(SHIPPED_TASKS), "--batch_size", str(args.batch_size), "--device", "cpu",
               "--output_path", str(Path(tmp) / "cli")]  # fmt: skip
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        stage_times, cli_times = [], []
        for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both alike
            start = time.perf_counter()
            ours = run_benchmarks(
                model, tokenizer, resolve([args.task]), limit=args.limit, batch_size=args.batch_size
            )
            stage_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            cli_times.append(time.perf_counter() - start)
        stage_s, cli_s = min(stage_times), min(cli_times)
        cli = json.loads(next((Path(tmp) / "cli").rglob("results_*.json")).read_text())["results"][args.task]
    print(
        json.dumps(
            {
                "model": args.model,
                "task": args.task,
                "limit": args.limit,
                "stage_seconds": round(stage_s, 2),
                "cli_seconds": round(cli_s, 2),
                "stage_over_cli": round(stage_s / cli_s, 3),
                "stage_seconds_each": [round(t, 2) for t in stage_times],
                "cli_seconds_each": [round(t, 2) for t in cli_times],
                "model_load_seconds_saved": round(load_s, 2),
                "stage_metrics": ours["metrics"][args.task],
                "cli_metrics": {k.split(",")[0]: v for k, v in cli.items() if k.endswith(",none")},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
