"""TensorRT-LLM engines (BF16 and FP8) of the built model and of its teacher, and their generation throughput.

TensorRT-LLM is optional (extra `trtllm`; published on NVIDIA's package index only). When
`tensorrt_llm` is importable, `run_engines` builds each engine through its LLM API (the TensorRT
engine backend: `LLM(model=HF_DIR, build_config=BuildConfig(...), quant_config=QuantConfig(
quant_algo=QuantAlgo.FP8, kv_cache_quant_algo=QuantAlgo.FP8))`, then `llm.save(ENGINE_DIR)`) and
times `llm.generate` on fixed-length random prompts (`SamplingParams(max_tokens=OUT, ignore_eos=True)`),
the same table as the torch backend. FP8 quantisation calibrates on TensorRT-LLM's default calibration
set (a download) unless the machine has it cached.

When it is not importable, `ablate build` says so in one line and writes `commands.sh`: the same run
through this module's command line, and the equivalent command-line flow (convert_checkpoint.py /
quantize.py, trtllm-build, prepare_dataset.py, trtllm-bench) for every engine.

    python -m ablate.build.trtllm engines --model student=DIR --model teacher=DIR --out DIR
    python -m ablate.build.trtllm materialize builtin:tiny-mistral DIR     # a built-in model as an HF folder
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ablate.build.throughput import ThroughputRow, ThroughputTable

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp8")
BATCH_SIZES = (1, 8, 32)
LENGTHS = ((128, 128), (512, 128))
CALIB_SIZE = 512
NUM_REQUESTS = 256
INSTALL = "pip install tensorrt_llm --extra-index-url https://pypi.nvidia.com"
# Example scripts that convert a Hugging Face checkpoint of each supported family.
CONVERT_SCRIPTS = {
    "llama": "examples/models/core/llama/convert_checkpoint.py",
    "mistral": "examples/models/core/llama/convert_checkpoint.py",
    "qwen2": "examples/models/core/qwen/convert_checkpoint.py",
    "qwen3": "examples/models/core/qwen/convert_checkpoint.py",
}


def available() -> bool:
    """Whether tensorrt_llm can be imported here (checked without importing it)."""
    try:
        return importlib.util.find_spec("tensorrt_llm") is not None
    except (ImportError, ValueError):
        return False


def unavailable_line(commands_path: Path | str) -> str:
    return (
        f"TensorRT-LLM is not installed here ({INSTALL}; Linux with an NVIDIA GPU): no engines built; "
        f"the exact commands are in {commands_path}"
    )


def parse_lengths(text: str) -> tuple[tuple[int, int], ...]:
    """'128:128,512:128' -> ((128, 128), (512, 128))."""
    out = []
    for part in text.split(","):
        i, _, o = part.strip().partition(":")
        out.append((int(i), int(o)))
    return tuple(out)


def format_lengths(lengths: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{i}:{o}" for i, o in lengths)


# --- the command-line flow ---------------------------------------------------------------------------


def engine_limits(batch_sizes: Sequence[int], lengths: Sequence[tuple[int, int]]) -> dict[str, int]:
    max_in = max(i for i, _ in lengths)
    return {
        "max_batch_size": max(batch_sizes),
        "max_input_len": max_in,
        "max_seq_len": max(i + o for i, o in lengths),
    }


def commands(
    models: Mapping[str, str],
    out: str,
    model_types: Mapping[str, str],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    lengths: Sequence[tuple[int, int]] = LENGTHS,
    materialize: Mapping[str, str] | None = None,
    header: Sequence[str] = (),
) -> str:
    """A bash script that builds BF16 and FP8 engines of each model (label -> HF folder or hub id) and
    measures their generation throughput, twice over: through `python -m ablate.build.trtllm` (what
    `ablate build` runs when tensorrt_llm is importable) and through TensorRT-LLM's own command line.
    `materialize` maps labels to built-in refs that must be written as HF folders first."""
    q = shlex.quote
    limits = engine_limits(batch_sizes, lengths)
    lines = [
        "#!/usr/bin/env bash",
        *[f"# {h}" for h in header],
        "# Needs Linux, an NVIDIA GPU (FP8: compute capability 8.9 or higher, e.g. H100/H200/L40S) and",
        f"# TensorRT-LLM: {INSTALL}",
        "# `bash commands.sh cli` also needs TRTLLM_REPO, a checkout of github.com/NVIDIA/TensorRT-LLM at the",
        "# installed version (for its convert_checkpoint.py, quantize.py and prepare_dataset.py).",
        "set -euo pipefail",
        "TRTLLM_REPO=${TRTLLM_REPO:-$HOME/TensorRT-LLM}",
        f"OUT={q(out)}",
    ]
    for label, path in models.items():
        lines.append(f"{label.upper()}={q(path)}")
    lines.append("")
    for label, ref in (materialize or {}).items():
        lines.append(f"# {label} is the built-in model {ref}: write it as a Hugging Face folder first")
        lines.append(f"python -m ablate.build.trtllm materialize {q(ref)} ${label.upper()}")
    if materialize:
        lines.append("")
    model_args = " ".join(f"--model {label}=${label.upper()}" for label in models)
    lines += [
        "# `bash commands.sh` (or `bash commands.sh api`): everything through the LLM API, BF16 and FP8",
        "# engines, then throughput into $OUT/throughput-trtllm.json.",
        'if [ "${1:-api}" = api ]; then',
        f"  python -m ablate.build.trtllm engines {model_args} --out $OUT "
        f"--batch-sizes {','.join(map(str, batch_sizes))} --lengths {format_lengths(lengths)}",
        "  exit 0",
        "fi",
        "",
        "# `bash commands.sh cli`: the same with TensorRT-LLM's command-line tools",
    ]
    build_flags = (
        f"--gemm_plugin auto --max_batch_size {limits['max_batch_size']} "
        f"--max_input_len {limits['max_input_len']} --max_seq_len {limits['max_seq_len']}"
    )
    for label in models:
        var = f"${label.upper()}"
        script = CONVERT_SCRIPTS.get(model_types.get(label, "llama"), CONVERT_SCRIPTS["llama"])
        lines += [
            f"# {label}, BF16",
            f"python $TRTLLM_REPO/{script} --model_dir {var} --output_dir $OUT/checkpoints/{label}-bf16 --dtype bfloat16",
            f"trtllm-build --checkpoint_dir $OUT/checkpoints/{label}-bf16 --output_dir $OUT/engines/{label}-bf16 "
            + build_flags,
            f"# {label}, FP8 (weights and activations FP8, FP8 KV cache, calibrated on {CALIB_SIZE} samples)",
            f"python $TRTLLM_REPO/examples/quantization/quantize.py --model_dir {var} --dtype bfloat16 "
            f"--qformat fp8 --kv_cache_dtype fp8 --calib_size {CALIB_SIZE} --output_dir $OUT/checkpoints/{label}-fp8",
            f"trtllm-build --checkpoint_dir $OUT/checkpoints/{label}-fp8 --output_dir $OUT/engines/{label}-fp8 "
            + build_flags
            + " --use_fp8_context_fmha enable",
        ]
    tokenizer = f"${next(iter(models)).upper()}"
    lines.append("# throughput: fixed-length synthetic requests, one dataset per (input, output) length")
    for i, o in lengths:
        lines.append(
            f"python $TRTLLM_REPO/benchmarks/cpp/prepare_dataset.py --stdout --tokenizer {tokenizer} token-norm-dist "
            f"--num-requests {NUM_REQUESTS} --input-mean {i} --input-stdev 0 --output-mean {o} --output-stdev 0 "
            f"> $OUT/dataset-{i}-{o}.jsonl"
        )
    for label in models:
        var = f"${label.upper()}"
        for precision in PRECISIONS:
            for i, o in lengths:
                for batch in batch_sizes:
                    lines.append(
                        f"trtllm-bench --model {var} --model_path {var} throughput --backend tensorrt "
                        f"--engine_dir $OUT/engines/{label}-{precision} --dataset $OUT/dataset-{i}-{o}.jsonl "
                        f"--max_batch_size {batch} --report_json $OUT/bench-{label}-{precision}-{i}-{o}-b{batch}.json"
                    )
    lines.append("")
    return "\n".join(lines)


# --- the LLM API ---------------------------------------------------------------------------------


def _api():
    """(LLM on the TensorRT engine backend, BuildConfig, QuantConfig, QuantAlgo, SamplingParams)."""
    try:  # TensorRT-LLM >= 1.0: the top-level LLM is the PyTorch backend; engines live here
        from tensorrt_llm._tensorrt_engine import LLM
    except ImportError:  # older releases: the top-level LLM builds TensorRT engines
        from tensorrt_llm import LLM
    from tensorrt_llm import SamplingParams
    from tensorrt_llm.llmapi import BuildConfig, QuantAlgo, QuantConfig

    return LLM, BuildConfig, QuantConfig, QuantAlgo, SamplingParams


def build_engine(model_dir: str, engine_dir: Path, precision: str, limits: Mapping[str, int]):
    """Build (and save) one engine of `model_dir`; returns the live LLM for measuring."""
    LLM, BuildConfig, QuantConfig, QuantAlgo, _ = _api()
    build_config = BuildConfig(**limits)
    kwargs: dict[str, Any] = {}
    if precision == "fp8":
        kwargs["quant_config"] = QuantConfig(quant_algo=QuantAlgo.FP8, kv_cache_quant_algo=QuantAlgo.FP8)
    elif precision != "bf16":
        raise ValueError(f"engine precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    llm = LLM(model=str(model_dir), dtype="bfloat16", build_config=build_config, **kwargs)
    engine_dir.mkdir(parents=True, exist_ok=True)
    llm.save(str(engine_dir))
    return llm


def bench_llm(
    llm,
    label: str,
    precision: str,
    vocab_size: int,
    batch_sizes: Sequence[int],
    lengths: Sequence[tuple[int, int]],
) -> list[ThroughputRow]:
    import random

    *_, SamplingParams = _api()
    rows = []
    rng = random.Random(0)
    for input_len, output_len in lengths:
        for batch in batch_sizes:
            prompts = [
                {"prompt_token_ids": [rng.randrange(vocab_size) for _ in range(input_len)]}
                for _ in range(batch)
            ]
            llm.generate(prompts, SamplingParams(max_tokens=min(4, output_len), ignore_eos=True))  # warm-up
            start = time.perf_counter()
            outputs = llm.generate(prompts, SamplingParams(max_tokens=output_len, ignore_eos=True))
            seconds = time.perf_counter() - start
            produced = sum(len(o.outputs[0].token_ids) for o in outputs)
            rows.append(
                ThroughputRow(
                    label, "trtllm", precision, batch, input_len, output_len, seconds=seconds,
                    tokens_per_s=produced / seconds, device=_gpu_name(),
                )
            )  # fmt: skip
    return rows


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "unknown"


def run_engines(
    models: Mapping[str, str],
    out: Path,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    lengths: Sequence[tuple[int, int]] = LENGTHS,
    precisions: Sequence[str] = PRECISIONS,
) -> ThroughputTable:
    """Build every engine (model x precision) under out/engines and measure it; one engine alive at a time."""
    from transformers import AutoConfig

    limits = engine_limits(batch_sizes, lengths)
    table = ThroughputTable(_gpu_name(), "trtllm")
    for label, model_dir in models.items():
        vocab = AutoConfig.from_pretrained(model_dir).vocab_size
        for precision in precisions:
            engine_dir = out / "engines" / f"{label}-{precision}"
            llm = build_engine(model_dir, engine_dir, precision, limits)
            try:
                table.rows += bench_llm(llm, label, precision, vocab, batch_sizes, lengths)
            finally:
                shutdown = getattr(llm, "shutdown", None)
                if shutdown is not None:
                    shutdown()
    (out / "throughput-trtllm.json").write_text(json.dumps(table.to_dict(), indent=1) + "\n")
    return table


def materialize(ref: str, target: Path) -> Path:
    """Write a model reference (e.g. a built-in) as a plain Hugging Face folder TensorRT-LLM can read."""
    from ablate.models.registry import load_model

    model, tokenizer = load_model(ref)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ablate.build.trtllm", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    eng = sub.add_parser("engines", help="build BF16/FP8 engines and measure generation throughput")
    eng.add_argument(
        "--model", action="append", required=True, help="LABEL=HF_DIR (repeat: student, teacher)"
    )
    eng.add_argument("--out", required=True)
    eng.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    eng.add_argument("--lengths", default=format_lengths(LENGTHS), help="INPUT:OUTPUT,...")
    eng.add_argument("--precisions", default=",".join(PRECISIONS))
    mat = sub.add_parser("materialize", help="write a model reference as a Hugging Face folder")
    mat.add_argument("ref")
    mat.add_argument("target")
    args = parser.parse_args(argv)
    if args.command == "materialize":
        print(materialize(args.ref, Path(args.target)))
        return 0
    if not available():
        print(f"tensorrt_llm is not importable: {INSTALL}", file=sys.stderr)
        return 2
    models = dict(m.split("=", 1) for m in args.model)
    table = run_engines(
        models,
        Path(args.out),
        tuple(int(b) for b in args.batch_sizes.split(",")),
        parse_lengths(args.lengths),
        tuple(args.precisions.split(",")),
    )
    print(json.dumps(table.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
