"""Cost of the activation-importance pass against a plain forward over the same calibration batches.

One run, same model, same batches: the two passes are alternated `--repeats` times and the median
time of each is compared (target: importance / forward <= 1.15). Both wall time and process CPU time
are reported; on a machine shared with other jobs the CPU-time ratio is the one to trust (wall time
then mostly measures the neighbours), so the default is one thread and short, many times alternated
passes. Peak memory is measured per pass
above the memory held before it (the loaded model), by sampling the process RSS every 0.2 ms on CPU, or
with torch.cuda.max_memory_allocated on CUDA (target: <= 1.1); the ratio of total peaks is reported too.
Prints one JSON object.

    python bench/importance_cost.py [--calibration-samples 16] [--seq-len 128] [--batch-size 8] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import threading
import time

import torch

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakRSS:
    """Samples the resident set size in a thread; torch kernels release the GIL, so sampling goes on."""

    def __init__(self, interval: float = 0.0002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.peak = rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--corpus", default="builtin:pydoc")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-agg", default="l2")
    parser.add_argument("--seq-agg", default="mean")
    parser.add_argument("--mlp-site", default="down_proj_input")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from ablate.data.corpus import batches, token_splits
    from ablate.models.registry import load_model
    from ablate.prune.activation import estimate_importance

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype)
    model, tok = load_model(args.model, dtype=dtype, device=device)
    splits = token_splits(tok, args.corpus, args.seq_len, 1024, args.calibration_samples)
    data = [b.to(device) for b in batches(splits.calibration, args.batch_size)]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward_pass():
        with torch.inference_mode():
            for batch in data:
                logits = model(input_ids=batch, use_cache=False).logits
                del logits

    def importance_pass():
        return estimate_importance(
            model, data, batch_agg=args.batch_agg, seq_agg=args.seq_agg, mlp_site=args.mlp_site
        )

    passes = {"forward": forward_pass, "importance": importance_pass}
    for fn in passes.values():  # warm-up (allocator, kernels)
        fn()
    times: dict[str, list[float]] = {name: [] for name in passes}
    cpu_times: dict[str, list[float]] = {name: [] for name in passes}
    for r in range(args.repeats):
        order = list(passes.items()) if r % 2 == 0 else list(passes.items())[::-1]
        for name, fn in order:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)

    memory = {}
    for name, fn in passes.items():
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            sync()
            peak = torch.cuda.max_memory_allocated()
        else:
            base = rss()
            with PeakRSS() as sampler:
                fn()
            peak = sampler.peak
        memory[name] = {
            "base_mib": round(base / 2**20, 1),
            "peak_mib": round(peak / 2**20, 1),
            "working_mib": round((peak - base) / 2**20, 1),
        }

    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_times.items()}
    tokens = sum(b.numel() for b in data)
    report = {
        "benchmark": "importance_cost",
        "model": args.model,
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if cuda else ""),
        "dtype": args.dtype,
        "threads": args.threads,
        "calibration": {
            "samples": args.calibration_samples,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "tokens": tokens,
        },
        "settings": {"batch_agg": args.batch_agg, "seq_agg": args.seq_agg, "mlp_site": args.mlp_site},
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "tokens_per_s": {k: round(tokens / v, 1) for k, v in med.items()},
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu_times.items()},
        "time_ratio": round(med["importance"] / med["forward"], 3),
        "time_ratio_min": round(min(times["importance"]) / min(times["forward"]), 3),
        "cpu_time_ratio": round(cpu_med["importance"] / cpu_med["forward"], 3),
        "cpu_time_ratio_min": round(min(cpu_times["importance"]) / min(cpu_times["forward"]), 3),
        "memory": memory,
        "peak_working_memory_ratio": round(
            memory["importance"]["working_mib"] / memory["forward"]["working_mib"], 3
        ),
        "peak_total_memory_ratio": round(memory["importance"]["peak_mib"] / memory["forward"]["peak_mib"], 3),
        "targets": {"time_ratio": 1.15, "peak_memory_ratio": 1.1},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
