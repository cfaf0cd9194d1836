"""The sharded data path's speed and memory: tokenize, load, and prepare's peak memory.

One run, on a generated JSONL corpus (the documents of builtin:pydoc, each tagged with its copy number,
repeated to the asked size, in 8 MB files), with the tokenizer of --tokenizer:

- tokenize: `tokenize_source` (read the JSONL, tokenize, append EOS, write uint16 shards and the index)
  with 1 and 2 processes, against calling the fast tokenizer directly on the same documents, already in
  memory, in the same run (the backend's encode_batch in the same 1 MB batches, and transformers'
  `tokenizer(docs)` on all of them): ratio = our tokens/s / direct tokens/s (target >= 0.9 with one
  process).
- load: global batches of the blended train order (two sources, 3:1), read through the trainer's
  DataOrder and the SequenceView as `train.py` reads them (random positions, LongTensor [b, seq_len]),
  against the 44,950 tokens/s one H100 distils the 1B config at (target >= 100x).
- memory: peak RSS of `ablate data prepare`'s work (tokenize_all) on a 2M- and a 20M-token corpus, each
  in a fresh subprocess (target: ratio <= 1.2), with the RSS after imports and tokenizer load.

Run: python bench/data_throughput.py [--tokenizer builtin:smollm2-135m] [--small 2e6] [--large 2e7]
Prints JSON.

Measured 2026-11-30 with `encode_batch_fast` (tokenizers 0.23.3; SmolLM2's tokenizer), in one run on 2 vCPUs
shared with a running study (load average 10): tokenize 1proc 123,005 tokens/s vs encode_batch 120,418:
ratio 1.021 (1.046 vs encode_batch_fast called directly, 1.128 vs transformers' tokenizer(docs); by CPU
time ours used 3.90 s against encode_batch's 5.88 s); 2proc 0.932. Loader 258,853,705 tokens/s = 5,759x an
H100's 44,950. prepare's peak RSS 398.9 MiB for 1.9M tokens, 403.0 MiB for 19.0M (ratio 1.01).
Before encode_batch_fast (idle machine): 0.854 by wall time, 0.889 by CPU time -- the offsets that
encode_batch computes and the shards never use were the gap.
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

H100_DISTILL_TOKENS_PER_S = 44_950


def make_corpus(folder: Path, chars: int, tag: str = "") -> Path:
    """JSONL files holding about `chars` characters of pydoc topics, each copy tagged."""
    import pydoc_data.topics

    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    folder.mkdir(parents=True, exist_ok=True)
    written, copy, part = 0, 0, 0
    out = open(folder / f"part{part:03d}.jsonl", "w")
    while written < chars:
        for text in topics:
            line = json.dumps({"text": f"{tag}[{copy}] {text}"}) + "\n"
            out.write(line)
            written += len(line)
            if written >= chars:
                break
        copy += 1
        if out.tell() > 8 << 20:
            out.close()
            part += 1
            out = open(folder / f"part{part:03d}.jsonl", "w")
    out.close()
    return folder


def _docs(folder: Path) -> list[str]:
    from ablate.data.sources import Source, documents

    return list(documents(Source(str(folder))))


def bench_tokenize(tokenizer, corpus: Path, work: Path, repeats: int) -> dict:
    """Best of `repeats` interleaved runs of each way (the machine is shared: the best is the least disturbed)."""
    from ablate.data.shards import BATCH_CHARS, tokenize_source
    from ablate.data.sources import Source

    docs = _docs(corpus)
    backend = tokenizer.backend_tokenizer

    def batched(encode_batch) -> int:
        tokens, batch, chars = 0, [], 0
        for doc in docs:
            batch.append(doc)
            chars += len(doc)
            if chars >= BATCH_CHARS:
                tokens += sum(len(e.ids) + 1 for e in encode_batch(batch, add_special_tokens=False))
                batch, chars = [], 0
        return tokens + sum(len(e.ids) + 1 for e in encode_batch(batch, add_special_tokens=False))

    def direct() -> int:
        return batched(backend.encode_batch)

    def direct_fast() -> int:  # the offsets-free call tokenize_source itself uses (tokenizers >= 0.21)
        return batched(backend.encode_batch_fast)

    def transformers_call() -> int:
        return sum(len(x) + 1 for x in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"])

    def ours(workers: int, rep: int):
        def run() -> int:
            folder = tokenize_source(
                Source(str(corpus)), tokenizer, 4096, work / f"w{workers}-{rep}", workers=workers
            )
            return json.loads((folder / "index.json").read_text())["total_tokens"]

        return run

    best: dict[str, tuple[float, float]] = {}
    tokens = direct()
    for rep in range(repeats):
        for name, fn in (("direct_encode_batch", direct), ("direct_encode_batch_fast", direct_fast),
                         ("direct_transformers_call", transformers_call),
                         ("ours_1proc", ours(1, rep)), ("ours_2proc", ours(2, rep))):  # fmt: skip
            wall, cpu = time.perf_counter(), time.process_time()
            assert fn() == tokens, name
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
    out: dict = {"tokens": tokens, "repeats": repeats}
    for name, (wall, cpu) in best.items():
        out[f"{name}_tokens_per_s"] = round(tokens / wall)
        out[f"{name}_cpu_s"] = round(cpu, 3)  # this process's CPU (all its threads; not the 2proc workers)
    for workers in (1, 2):
        ours_wall = best[f"ours_{workers}proc"][0]
        out[f"ratio_{workers}proc_vs_direct"] = round(best["direct_encode_batch"][0] / ours_wall, 3)
        out[f"ratio_{workers}proc_vs_direct_fast"] = round(best["direct_encode_batch_fast"][0] / ours_wall, 3)
        out[f"ratio_{workers}proc_vs_transformers_call"] = round(
            best["direct_transformers_call"][0] / ours_wall, 3
        )
    out["cpu_ratio_1proc_vs_direct"] = round(best["direct_encode_batch"][1] / best["ours_1proc"][1], 3)
    return out


def bench_load(
    tokenizer, corpus_a: Path, corpus_b: Path, work: Path, seq_len: int, batch: int, steps: int
) -> dict:
    from ablate.data.prepare import prepare_splits
    from ablate.distill.data_order import DataOrder

    data = {"sources": [{"path": str(corpus_a), "weight": 3}, {"path": str(corpus_b), "weight": 1}],
            "seq_len": seq_len, "eval_tokens": 4 * seq_len}  # fmt: skip
    splits = prepare_splits(tokenizer, data, None, 4, cache_dir=work / "load", train_samples=100_000)
    order = DataOrder(0, len(splits.train))
    splits.train[order.indices(0, batch)]  # first touch of the maps
    t = time.perf_counter()
    tokens = 0
    for step in range(steps):
        tokens += splits.train[order.indices(step * batch, batch)].numel()
    rate = tokens / (time.perf_counter() - t)
    return {"seq_len": seq_len, "global_batch": batch, "steps": steps, "tokens_per_s": round(rate),
            "ratio_vs_h100_1b_distill": round(rate / H100_DISTILL_TOKENS_PER_S, 1),
            "blend": [round(s["share"], 4) for s in splits.sources]}  # fmt: skip


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child_prepare(tokenizer_ref: str, corpus: str, out: str) -> None:
    """Run in a fresh process: tokenize one corpus; print the RSS before and the peak RSS during it (MiB).

    The kernel's high-water mark is reset (/proc/self/clear_refs) after the tokenizer is loaded, so the
    peak is prepare's own, not that of loading the tokenizer."""
    from ablate.data.prepare import tokenize_all
    from ablate.data.sources import Source
    from ablate.models.registry import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_ref)
    load_peak = _status_mib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mib("VmRSS")
    t = time.perf_counter()
    (folder,) = tokenize_all(tokenizer, [Source(corpus)], 4096, cache_dir=out)
    seconds = time.perf_counter() - t
    peak = _status_mib("VmHWM")
    tokens = json.loads((folder / "index.json").read_text())["total_tokens"]
    print(json.dumps({"tokens": tokens, "load_peak_rss_mib": round(load_peak, 1), "rss_before_mib": round(before, 1),
                      "peak_rss_mib": round(peak, 1), "seconds": round(seconds, 2)}))  # fmt: skip


def bench_memory(tokenizer_ref: str, corpora: dict[str, Path], work: Path) -> dict:
    out = {}
    for name, corpus in corpora.items():
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(corpus),
            "--tokenizer",
            tokenizer_ref,
            "--work",
            str(work / name),
        ]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    small, large = out.values()
    out["peak_rss_ratio"] = round(large["peak_rss_mib"] / small["peak_rss_mib"], 3)
    return out


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="builtin:smollm2-135m")
    parser.add_argument("--small", type=float, default=2e6, help="tokens of the small corpus (about)")
    parser.add_argument("--large", type=float, default=2e7, help="tokens of the large corpus (about)")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_prepare(args.tokenizer, args.child, args.work)
    from ablate.models.registry import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        chars_per_token = 4.1  # pydoc under a BPE tokenizer; the JSON reports the exact counts
        small = make_corpus(work / "small", int(args.small * chars_per_token))
        large = make_corpus(work / "large", int(args.large * chars_per_token), tag="L")
        result = {
            "tokenizer": args.tokenizer,
            "cpus": os.cpu_count(),
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "tokenize": bench_tokenize(tokenizer, small, work, args.repeats),
            "load": bench_load(tokenizer, small, large, work, args.seq_len, args.global_batch, args.steps),
            "prepare_memory": bench_memory(args.tokenizer, {"small": small, "large": large}, work),
        }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
