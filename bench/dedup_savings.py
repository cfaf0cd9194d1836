"""Savings from de-duplication on a 2 targets x 3 losses x 2 seeds grid (12 trials of specs/tiny.yaml).

Three measurements, in one run:

- stage counts: what `ablate submit` runs (the de-duplicated graph) against the naive count (every trial
  its own teacher, importance, prune, distill and eval), and what the submission reports it ran;
- `ablate submit` wall time (a fresh process and workspace, everything from scratch, 2 trials at a time),
  against one trial submitted from scratch the same way, times 12 (each trial from scratch with ablate);
- "each trial from scratch": every trial runs its own five stages into its own empty store, two trials at
  a time in a pool of two warm processes (no Ray, no records: the cheapest possible way to run it naively),
  and the same five runners in one process, sequentially, once for the naive stage list and once for the
  de-duplicated one (pure compute, no parallelism, no orchestration).

Prints JSON. Run: python bench/dedup_savings.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from ablate.cli import main; sys.exit(main())"]


def write_spec(folder: Path) -> Path:
    text = (ROOT / "specs" / "tiny.yaml").read_text()
    text = text.replace("name: tiny", "name: bench-dedup")
    text = text.replace("distill.loss: [kld, ce]", "distill.loss: [kld, ce, scratch]")
    text = text.replace("seeds: [0]", "seeds: [0, 1]")
    assert "scratch" in text and "seeds: [0, 1]" in text
    spec = folder / "dedup.yaml"
    spec.write_text(text)
    return spec


def _warm() -> None:
    import torch

    from ablate.run.ray_workers import warm_imports

    torch.set_num_threads(1)
    warm_imports()


def run_trial_from_scratch(spec: str, key: str, store_root: str) -> float:
    """One trial's five stages, in order, into a store of its own; returns seconds."""
    from ablate.plan.stages import trial_stages
    from ablate.run.artifacts import ArtifactStore
    from ablate.run.stage_runners import StageContext, run_stage
    from ablate.spec.validate import load_spec

    trial = next(t for t in load_spec(spec).trials if t.key == key)
    stages = trial_stages(trial)
    by_hash = {s.hash: s for s in stages.values()}
    store = ArtifactStore(store_root)
    started = time.perf_counter()
    for stage in stages.values():
        parents = {by_hash[p].kind: by_hash[p] for p in stage.parents}
        run_stage(stage, StageContext(store, parents, str(Path(spec).parent)))
    return time.perf_counter() - started


def run_stages_sequentially(spec: Path, store_root: Path, dedup: bool) -> tuple[float, int]:
    from ablate.plan.graph import build_graph
    from ablate.plan.stages import trial_stages
    from ablate.run.artifacts import ArtifactStore
    from ablate.run.stage_runners import RUNNERS, StageContext
    from ablate.spec.validate import load_spec

    loaded = load_spec(spec)
    started = time.perf_counter()
    n = 0
    if dedup:
        graph = build_graph(loaded.trials)
        store = ArtifactStore(str(store_root))
        for stage in graph.stages.values():
            parents = {graph.stages[p].kind: graph.stages[p] for p in stage.parents}
            RUNNERS[stage.kind](stage, StageContext(store, parents, str(spec.parent)))
            n += 1
    else:
        for i, trial in enumerate(loaded.trials):
            stages = trial_stages(trial)
            by_hash = {s.hash: s for s in stages.values()}
            store = ArtifactStore(str(store_root / f"trial{i}"))
            for stage in stages.values():
                parents = {by_hash[p].kind: by_hash[p] for p in stage.parents}
                RUNNERS[stage.kind](stage, StageContext(store, parents, str(spec.parent)))
                n += 1
    return time.perf_counter() - started, n


def main() -> None:
    from ablate.plan.graph import build_graph
    from ablate.spec.validate import load_spec

    work = Path(tempfile.mkdtemp(prefix="ablate-bench-dedup-"))
    try:
        spec = write_spec(work)
        loaded = load_spec(spec)
        graph = build_graph(loaded.trials)
        counts, naive = graph.counts(), graph.naive_counts()

        # ablate submit, from scratch, in a fresh process and workspace
        ws = work / "ablate"
        ws.mkdir()
        shutil.copy(spec, ws / spec.name)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        started = time.perf_counter()
        proc = subprocess.run(
            [*CLI, "submit", spec.name, "--json"], cwd=ws, env=env, capture_output=True, text=True
        )
        ablate_wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"ablate submit failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        submitted = json.loads(proc.stdout)

        # one trial from scratch through ablate (its own workspace: all five stages): running each of the
        # 12 trials like this, one after the other, is the naive way with the same tool
        one = work / "one"
        one.mkdir()
        (one / "one.yaml").write_text(
            spec.read_text()
            .replace("name: bench-dedup", "name: bench-one")
            .replace("distill.loss: [kld, ce, scratch]", "distill.loss: [kld]")
            .replace("target: [width, depth]", "target: [width]")
            .replace("seeds: [0, 1]", "seeds: [0]")
        )
        started = time.perf_counter()
        proc = subprocess.run(
            [*CLI, "submit", "one.yaml", "--json"], cwd=one, env=env, capture_output=True, text=True
        )
        one_wall = time.perf_counter() - started
        assert proc.returncode == 0 and sum(json.loads(proc.stdout)["stages"]["run"].values()) == 5, (
            proc.stdout
        )

        # every trial from scratch, two at a time, in two warm processes (their start-up not timed)
        with ProcessPoolExecutor(max_workers=2, initializer=_warm) as pool:
            list(pool.map(time.sleep, [0.5, 0.5]))  # both workers started and warm
            started = time.perf_counter()
            per_trial = list(
                pool.map(
                    run_trial_from_scratch,
                    [str(spec)] * len(loaded.trials),
                    [t.key for t in loaded.trials],
                    [str(work / "scratch" / f"trial{i}") for i in range(len(loaded.trials))],
                )
            )
            scratch_wall = time.perf_counter() - started

        # pure compute, one process, one thread, sequential
        _warm()
        naive_s, naive_n = run_stages_sequentially(spec, work / "seq-naive", dedup=False)
        dedup_s, dedup_n = run_stages_sequentially(spec, work / "seq-dedup", dedup=True)

        print(
            json.dumps(
                {
                    "benchmark": "dedup_savings",
                    "grid": "2 targets x 3 losses (kld, ce, scratch) x 2 seeds = 12 trials, builtin:tiny-mistral",
                    "cpus": os.cpu_count(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "stages": {
                        "dedup": counts,
                        "dedup_total": sum(counts.values()),
                        "naive": naive,
                        "naive_total": sum(naive.values()),
                        "saved_fraction": round(1 - sum(counts.values()) / sum(naive.values()), 3),
                        "ablate_submit_ran": submitted["stages"]["run"],
                    },
                    "wall_s": {
                        "ablate_submit_from_scratch": round(ablate_wall, 2),
                        "ablate_submit_inside_executor": submitted["wall_s"],
                        "ablate_submit_one_trial_from_scratch": round(one_wall, 2),
                        "ablate_each_trial_from_scratch_estimate": round(one_wall * len(loaded.trials), 1),
                        "ablate_grid_vs_each_from_scratch": round(
                            ablate_wall / (one_wall * len(loaded.trials)), 3
                        ),
                        "each_trial_from_scratch_2_processes": round(scratch_wall, 2),
                        "per_trial_from_scratch_mean": round(sum(per_trial) / len(per_trial), 2),
                    },
                    "sequential_compute_s": {
                        "naive_stages": naive_n,
                        "naive_s": round(naive_s, 2),
                        "dedup_stages": dedup_n,
                        "dedup_s": round(dedup_s, 2),
                        "saved_fraction": round(1 - dedup_s / naive_s, 3),
                    },
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
