"""Serving throughput of MN-Minitron-8B and Mistral NeMo 12B shapes, BF16 against FP8, against the roofline.

Random weights (decode time does not depend on their values), built directly on the GPU in BF16; decoding
through ablate/build/decode.py (StaticCache, the decode step replayed from a CUDA graph; FP8 linears
compiled by inductor), FP8 through torchao (ablate/build/fp8.py: `fp8` = W8A8 dynamic per-row like
TensorRT-LLM's recipe, `fp8-wo` = weight-only). Per row: output tokens/s, TTFT, TPOT, and the bandwidth
roofline TPOT (ablate/build/roofline.py). Rows run in priority order until --budget-s is spent; the rest
are reported as skipped. Each row is printed as one JSON line when done (`{"row": ...}`), --out is
rewritten after every row, and the whole report is printed last.

    python bench/serve_fp8.py --config tiny --device cpu                 # CPU smoke run, well under a minute
    python bench/serve_fp8.py --out /tmp/serve.json --budget-s 300       # one H200: the issue's grid

Imports only torch, transformers (and torchao for FP8 rows) and ablate modules that import nothing else.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, MistralConfig  # noqa: E402

from ablate.build import fp8, roofline  # noqa: E402
from ablate.build import throughput as tp  # noqa: E402

SHAPES = {
    # name: hidden, layers, heads, kv heads, head_dim, ffn, vocab
    "mn-minitron-8b": (4096, 40, 32, 8, 128, 11520, 131072),
    "mistral-nemo-12b": (5120, 40, 32, 8, 128, 14336, 131072),
    "tiny": (64, 2, 4, 2, 16, 128, 512),
}
CONFIGS = {
    "gpu": {
        "models": ("mn-minitron-8b", "mistral-nemo-12b"),
        "batch_sizes": (1, 32),
        "lengths": ((512, 128),),
        "precisions": ("bf16", "fp8", "fp8-wo"),
    },
    "tiny": {
        "models": ("tiny",),
        "batch_sizes": (1, 2),
        "lengths": ((16, 8),),
        "precisions": ("bf16", "fp8", "fp8-wo"),
    },
}


def config_of(name: str) -> MistralConfig:
    hidden, layers, heads, kv, head_dim, ffn, vocab = SHAPES[name]
    return MistralConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, max_position_embeddings=4096,
        sliding_window=None, tie_word_embeddings=False, rope_theta=1e6,
    )  # fmt: skip


def random_model(config: MistralConfig, device: torch.device, dtype: torch.dtype):
    """Random weights created on the device in the dtype they run in (no host copy of 24 GB)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def plan(cfg: dict) -> list[tuple[str, str, int]]:
    """(model, precision, batch) in priority order: BF16 and W8A8 at batch 1 first (the FP8 claim), then
    batch 32, then weight-only FP8; grouped so one model instance serves consecutive rows."""
    rows = []
    for precisions in (("bf16", "fp8"), ("fp8-wo",)):
        for model in cfg["models"]:
            for precision in precisions:
                if precision in cfg["precisions"]:
                    rows += [(model, precision, b) for b in cfg["batch_sizes"]]
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="gpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=("graph", "compile", "eager"), default=None,
                        help="decode step (default: graph on CUDA, eager on CPU)")  # fmt: skip
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="stop starting rows after this many seconds"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed generations per row (the fastest counts)"
    )
    parser.add_argument("--out", default=None, help="also write the JSON here (after every row)")
    parser.add_argument("--models", default=None, help="comma-separated subset of the config's models")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, instead of the config's")
    parser.add_argument("--precisions", default=None, help="comma-separated subset of bf16,fp8,fp8-wo")
    parser.add_argument("--fp8-regions", choices=("compile", "eager"), default="compile",
                        help="FP8 rows in mode graph: compile the blocks' linears and MLPs, or run them eager")  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cfg = dict(CONFIGS[args.config])
    if args.models:
        cfg["models"] = tuple(args.models.split(","))
    if args.batch_sizes:
        cfg["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
    if args.precisions:
        cfg["precisions"] = tuple(args.precisions.split(","))
    mode = args.mode or tp.default_mode(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    name = tp.device_name(device)
    report = {
        "bench": "serve_fp8",
        "config": args.config,
        "device": name,
        "bandwidth_bytes_per_s": roofline.bandwidth(name),
        "capability": list(fp8.cuda_capability(device) or []),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torchao": fp8.torchao_version(),
        "python": platform.python_version(),
        "mode": mode,
        "fp8_regions": args.fp8_regions,
        "budget_s": args.budget_s,
        "shapes": {
            m: dict(
                zip(
                    ("hidden", "layers", "heads", "kv_heads", "head_dim", "ffn", "vocab"),
                    SHAPES[m],
                    strict=True,
                )
            )
            for m in cfg["models"]
        },  # fmt: skip
        "rows": [],
        "notes": [],
    }
    if device.type == "cpu":
        report["notes"].append(tp.CPU_WARNING)
    if report["bandwidth_bytes_per_s"] is None:
        report["notes"].append(f"no roofline: the memory bandwidth of {name} is not in ablate's table")

    def dump(row: tp.ThroughputRow | None = None) -> None:
        if row is not None:
            d = row.to_dict() | {"roofline_ratio": round(row.roofline_ratio, 3)}
            report["rows"].append(d)
            print(json.dumps({"row": d}), flush=True)
        report["wall_s"] = round(time.perf_counter() - started, 2)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")

    input_len, output_len = cfg["lengths"][0]
    model, loaded = None, None
    for label, precision, batch in plan(cfg):
        precision = "fp32" if precision == "bf16" and dtype == torch.float32 else precision
        row = tp.ThroughputRow(
            label, "torch", precision, batch, input_len, output_len, device=name, mode=mode
        )
        shape = roofline.Shape.of(config_of(label))
        row.roofline_tpot_s = (
            roofline.roofline_tpot(shape, precision, batch, input_len, output_len, name) or 0.0
        )
        reason = fp8.fp8_unavailable(device) if precision in fp8.FP8_PRECISIONS else ""
        if not reason and time.perf_counter() - started > args.budget_s:
            reason = f"budget: {args.budget_s:.0f} s spent before this row"
        if reason:
            row.skipped = reason
            dump(row)
            continue
        try:
            if loaded != (label, precision):
                model = loaded = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                model = random_model(config_of(label), device, dtype)
                if precision in fp8.FP8_PRECISIONS:
                    fp8.quantize(model, precision)
                loaded = (label, precision)
            measured = tp.measure_model(model, label, precision, [batch], [(input_len, output_len)],
                                        repeats=args.repeats, mode=mode,
                                        compile_fp8_regions=args.fp8_regions == "compile")[0]  # fmt: skip
            row = measured
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            text = str(exc).strip()
            row.skipped = f"failed: {type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
            model = loaded = None
        dump(row)
    model = None
    rows = [tp.ThroughputRow(**{k: v for k, v in r.items() if k != "roofline_ratio"}) for r in report["rows"]]
    report["speedups"] = tp.speedups(rows)
    report["tpot_speedups"] = [
        {"kind": f"{r.precision}/bf16 TPOT", "model": r.model, "batch_size": r.batch_size,
         "speedup": round(base.tpot_s / r.tpot_s, 3)}
        for r in rows for base in rows
        if r.precision in fp8.FP8_PRECISIONS and base.precision == "bf16" and not r.skipped and not base.skipped
        and (r.model, r.batch_size) == (base.model, base.batch_size) and r.tpot_s
    ]  # fmt: skip
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    report["table"] = tp.format_table(tp.ThroughputTable(name, "torch", rows, report["notes"]))
    dump()
    print(json.dumps(report, indent=1), flush=True)
    return report


if __name__ == "__main__":
    main()
