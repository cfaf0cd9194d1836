"""Orchestration overhead: one grid of tiny trials through `ablate submit` and through a plain Ray Tune
script with Ray's MLflow callback (ray.air.integrations.mlflow.MLflowLoggerCallback), in one run.

Both sides run the same trials (specs/tiny.yaml's grid, more seeds) with the same work per trial (the
distill and eval runners of ablate.run.stage_runners on the same pruned students), the same resources and the
same concurrency, each from shared-stage artifacts built once beforehand (not timed). Each side is a fresh
process timed from launch to exit; each trial measures its own work (distill + eval with model and data
loading, after the imports both sides do before it). Then, with N trials and concurrency c:

    overhead_s            = wall - sum(work) / c           everything that is not trial work
    overhead_per_trial_s  = overhead_s / N
    startup_s             = launch -> first trial's work starts (imports, Ray, MLflow, actors)
    steady_per_trial_s    = (last work end - first work start - sum(work) / c) / N

The plain side runs twice: with Tune's defaults (reuse_actors=False: a fresh worker process per trial)
and with reuse_actors=True (what ablate sets), to separate the two sources of ablate's advantage.

Run: python bench/orchestration_overhead.py [--seeds 3] [--concurrency 2]; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from ablate.cli import main; sys.exit(main())"]


def write_spec(folder: Path, seeds: int, concurrency: int) -> Path:
    text = (ROOT / "specs" / "tiny.yaml").read_text()
    text = text.replace("name: tiny", "name: bench-overhead")
    text = text.replace("seeds: [0]", f"seeds: [{', '.join(str(s) for s in range(seeds))}]")
    text = text.replace("max_concurrent: 2", f"max_concurrent: {concurrency}")
    assert "bench-overhead" in text and "max_concurrent" in text
    spec = folder / "bench.yaml"
    spec.write_text(text)
    return spec


def build_shared_stages(spec: Path, store_root: Path) -> None:
    """Teacher, importance and prune artifacts, in this process (not part of either measurement)."""
    import torch

    from ablate.plan.graph import build_graph
    from ablate.run.artifacts import ArtifactStore
    from ablate.run.stage_runners import StageContext, run_stage
    from ablate.spec.validate import load_spec

    torch.set_num_threads(1)
    loaded = load_spec(spec)
    graph = build_graph(loaded.trials)
    store = ArtifactStore(str(store_root))
    for stage in graph.stages.values():
        if stage.kind in ("teacher", "importance", "prune"):
            parents = {graph.stages[p].kind: graph.stages[p] for p in stage.parents}
            run_stage(stage, StageContext(store, parents, str(spec.parent)))


def summarise(wall: float, launch: float, trials: list[dict], concurrency: int) -> dict:
    n = len(trials)
    work = sum(t["work_s"] for t in trials)
    first = min(t["started"] for t in trials)
    last = max(t["finished"] for t in trials)
    overhead = wall - work / concurrency
    return {
        "trials": n,
        "wall_s": round(wall, 2),
        "work_s_total": round(work, 2),
        "work_s_first_two": sorted(round(t["work_s"], 2) for t in trials)[-2:],
        "work_s_median": round(sorted(t["work_s"] for t in trials)[n // 2], 3),
        "overhead_s": round(overhead, 2),
        "overhead_per_trial_s": round(overhead / n, 3),
        "startup_s": round(first - launch, 2),
        "steady_per_trial_s": round((last - first - work / concurrency) / n, 3),
    }


# ----------------------------------------------------------------------------------------- plain Ray Tune
def plain(workdir: Path, spec: Path, concurrency: int, reuse_actors: bool) -> None:
    """The same trials through Ray Tune directly: a Tuner over the trial keys, Ray's MLflow callback,
    Tune's defaults otherwise (its default loggers and actor reuse included)."""
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    from ablate.plan.graph import build_graph
    from ablate.spec.validate import load_spec

    loaded = load_spec(spec)
    graph = build_graph(loaded.trials)
    payloads = {
        t.key: {k: graph.stages[h] for k, h in graph.trial_stages[t.key].items()} for t in loaded.trials
    }
    # Each trial's config: its key and its overrides (what MLflowLoggerCallback logs as params).
    configs = [{"key": t.key, **{k: str(v) for k, v in t.overrides.items()}} for t in loaded.trials]
    store_url, base_dir = str(workdir / "artifacts"), str(spec.parent)

    def trainable(config: dict, payloads: dict) -> None:
        import time as _time

        import torch
        from ray import tune as _tune

        from ablate.run.artifacts import ArtifactStore
        from ablate.run.ray_workers import warm_imports
        from ablate.run.stage_runners import RUNNERS, StageContext

        torch.set_num_threads(1)
        warm_imports()  # as ablate's trials do: the clock starts when the trial's own work does
        started = _time.time()
        stages = payloads[config["trial"]["key"]]
        store = ArtifactStore(store_url)
        RUNNERS["distill"](
            stages["distill"],
            StageContext(
                store,
                {"prune": stages["prune"], "teacher": stages["teacher"]},
                base_dir,
                lambda m: _tune.report({k: v for k, v in m.items() if isinstance(v, (int, float))}),
            ),
        )
        metrics = RUNNERS["eval"](
            stages["eval"],
            StageContext(store, {"distill": stages["distill"], "teacher": stages["teacher"]}, base_dir),
        )
        finished = _time.time()
        _tune.report({**metrics, "work_s": finished - started, "started": started, "finished": finished})

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, payloads=payloads), {"cpu": 1, "gpu": 0}),
        param_space={"trial": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(
            name="plain",
            storage_path=str(workdir / "tune"),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                    experiment_name="bench-plain",
                    save_artifact=False,
                )
            ],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    trials = []
    for result in grid:
        m = result.metrics
        assert result.error is None, result.error
        trials.append(
            {
                "key": result.config["trial"]["key"],
                "work_s": m["work_s"],
                "started": m["started"],
                "finished": m["finished"],
            }
        )
    print("BENCH_JSON " + json.dumps({"trials": trials}))


# ----------------------------------------------------------------------------------------- main
def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    launch = time.time()
    env = {**env, "BENCH_LAUNCH": repr(launch)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.time() - launch
    if proc.returncode != 0:
        raise SystemExit(
            f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return launch, wall, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds per grid cell (2 targets x 2 losses each)"
    )
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--plain", nargs=2, metavar=("WORKDIR", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--reuse-actors", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-reuse-variant", action="store_true", help="skip plain Tune with reuse_actors=True (a third run)"
    )
    args = parser.parse_args()
    if args.plain:
        plain(Path(args.plain[0]), Path(args.plain[1]), args.concurrency, args.reuse_actors)
        return

    work = Path(tempfile.mkdtemp(prefix="ablate-bench-overhead-"))
    try:
        spec = write_spec(work, args.seeds, args.concurrency)
        shared = work / "shared"
        t = time.perf_counter()
        build_shared_stages(spec, shared)
        prep_s = time.perf_counter() - t
        ablate_ws, plain_ws, reuse_ws = work / "ablate", work / "plain", work / "plain-reuse"
        for ws, store in (
            (ablate_ws, ablate_ws / ".ablate" / "artifacts"),
            (plain_ws, plain_ws / "artifacts"),
            (reuse_ws, reuse_ws / "artifacts"),
        ):
            ws.mkdir()
            shutil.copytree(shared, store)
            shutil.copy(spec, ws / "bench.yaml")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

        launch, wall, out = timed([*CLI, "submit", "bench.yaml", "--json"], ablate_ws, env)
        result = json.loads(out)
        assert result["ok"], result
        ablate = summarise(wall, launch, [t["ran"] for t in result["trials"]], args.concurrency)
        ablate["stages"] = result["stages"]

        def run_plain(ws: Path, reuse: bool) -> dict:
            cmd = [sys.executable, __file__, "--plain", str(ws), str(ws / "bench.yaml")]
            cmd += ["--concurrency", str(args.concurrency)] + (["--reuse-actors"] if reuse else [])
            launch, wall, out = timed(cmd, ws, env)
            line = next(line for line in out.splitlines() if line.startswith("BENCH_JSON "))
            return summarise(wall, launch, json.loads(line[len("BENCH_JSON ") :])["trials"], args.concurrency)

        plain_res = run_plain(plain_ws, reuse=False)
        reuse_res = None if args.no_reuse_variant else run_plain(reuse_ws, reuse=True)

        print(
            json.dumps(
                {
                    "benchmark": "orchestration_overhead",
                    "grid": f"2 targets x 2 losses x {args.seeds} seeds (specs/tiny.yaml, builtin:tiny-mistral)",
                    "concurrency": args.concurrency,
                    "cpus": os.cpu_count(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "shared_stages_prep_s": round(prep_s, 2),
                    "ablate_submit": ablate,
                    "plain_ray_tune_mlflow": plain_res,
                    "plain_ray_tune_mlflow_reuse_actors": reuse_res,
                    "ratio_overhead_per_trial_ablate_over_plain": round(
                        ablate["overhead_per_trial_s"] / plain_res["overhead_per_trial_s"], 3
                    ),
                    "ratio_wall_ablate_over_plain": round(ablate["wall_s"] / plain_res["wall_s"], 3),
                },
                indent=2,
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
