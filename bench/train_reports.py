"""What per-step reports cost a trial on Ray Train workers: one report per step against ablate's batches.

`ray.train.report` puts a result on a queue of one that the Ray Train controller drains when it polls
(every 2 s by default, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), and every rank calls it. Two workers run
`--steps` steps of `--step-ms` each (a sleep stands in for the step's compute, so only the reporting
differs) and report through (a) `ray.train.report` at every step, as ablate did, and (b)
`ablate.run.step_reports.StepBatches`, as it does now. Both in the same run, on the local Ray. Prints
JSON: wall seconds of the training loop and steps/s for each, and their ratio.

    python bench/train_reports.py                      # 2 workers, 40 steps of 100 ms: about a minute
    python bench/train_reports.py --steps 200 --step-ms 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _worker(config: dict) -> None:
    import ray.train

    from ablate.distill.parallel import Parallel
    from ablate.run.step_reports import StepBatches

    parallel = Parallel.current("ddp")
    steps, step_s = config["steps"], config["step_ms"] / 1000
    send = StepBatches(ray.train.report, parallel) if config["batched"] else ray.train.report
    add = send.add if config["batched"] else send
    parallel.barrier()
    started = time.perf_counter()
    for step in range(1, steps + 1):
        time.sleep(step_s)
        add({"phase": "distill", "step": step, "steps": steps, "loss": 1.0 / step})
    seconds = time.perf_counter() - started
    if parallel.is_main:
        Path(config["out"]).write_text(json.dumps({"seconds": seconds}))


def measure(steps: int, step_ms: float, batched: bool, storage: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(storage) / f"result-{batched}.json"
    TorchTrainer(
        _worker,
        train_loop_config={"steps": steps, "step_ms": step_ms, "batched": batched, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"reports-{batched}", storage_path=storage),
    ).fit()
    seconds = json.loads(out.read_text())["seconds"]
    return {"seconds": round(seconds, 2), "steps_per_s": round(steps / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-ms", type=float, default=100.0)
    args = parser.parse_args()
    import os

    import ray

    from ablate.run.executor import init_ray

    init_ray(None)
    with tempfile.TemporaryDirectory() as storage:
        per_step = measure(args.steps, args.step_ms, False, storage)
        batched = measure(args.steps, args.step_ms, True, storage)
    ray.shutdown()
    compute = args.steps * args.step_ms / 1000
    print(
        json.dumps(
            {
                "workers": 2,
                "steps": args.steps,
                "step_ms": args.step_ms,
                "poll_s": float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)),
                "compute_s": compute,
                "report_every_step": per_step,
                "batched": batched,
                "speedup": round(per_step["seconds"] / batched["seconds"], 2),
                "batched_overhead": round(batched["seconds"] / compute - 1, 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
