"""Generation throughput of the torch backend of `ablate build`: static KV cache, compiled decode step.

The same table the TensorRT-LLM backend fills (model x precision x batch size x input/output length),
reported as trtllm-bench reports it: output tokens per second, time to first token (TTFT: the prefill of
the batch) and time per output token (TPOT: one decode step), with the bandwidth roofline beside each row
(weights' and KV cache's bytes per step / the device's memory bandwidth: ablate/build/roofline.py), so a
reader sees how close to the memory limit the measurement is.

Decoding is ablate/build/decode.py's: transformers' StaticCache, a prefill forward, then one step per token
replayed from a CUDA graph on a GPU (eager on a CPU), greedy with a fixed output length on random prompt
tokens, after a warm-up of the same shape. Precisions: float32 on CPU; BF16 and, where the GPU has FP8
tensor cores and torchao imports (ablate/build/fp8.py), FP8 W8A8 (`fp8`) and FP8 weight-only (`fp8-wo`).
A model whose transformers has no usable StaticCache falls back to eager `generate` (mode "generate").

Only torch and transformers are imported (torchao for FP8 rows), so bench scripts run on a bare GPU machine.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ablate.build import decode, fp8, roofline

log = logging.getLogger(__name__)

CPU_BATCH_SIZES = (1, 4)
CPU_LENGTHS = ((32, 32),)
GPU_BATCH_SIZES = (1, 32)
GPU_LENGTHS = ((512, 128),)
GPU_PRECISIONS = ("bf16", "fp8", "fp8-wo")
CPU_WARNING = (
    "CPU: not a serving measurement. Float32 only, and on a shared or busy CPU the figures move by tens "
    "of percent between runs; compare models and precisions by their GPU rows"
)


@dataclass
class ThroughputRow:
    model: str  # "student" / "teacher" or any label
    backend: str  # "torch" / "trtllm"
    precision: str  # "fp32" / "bf16" / "fp8" (W8A8) / "fp8-wo" (weight-only)
    batch_size: int
    input_len: int
    output_len: int
    seconds: float = 0.0  # TTFT + all decode steps
    tokens_per_s: float = 0.0  # output tokens per second (batch x output_len / seconds)
    params: int = 0
    device: str = ""
    skipped: str = ""  # why this row was not measured (empty when it was)
    ttft_s: float = 0.0  # time to first token: prefill of the whole batch
    tpot_s: float = 0.0  # time per output token after the first (one decode step)
    roofline_tpot_s: float = 0.0  # bytes per step / bandwidth (0: the device's bandwidth is unknown)
    mode: str = ""  # decode path: graph / compile / eager / generate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def roofline_ratio(self) -> float:
        """Measured TPOT over the roofline's (1.0 = at the memory limit; 0 when either is unknown)."""
        return self.tpot_s / self.roofline_tpot_s if self.tpot_s and self.roofline_tpot_s else 0.0


@dataclass
class ThroughputTable:
    device: str
    backend: str
    rows: list[ThroughputRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "backend": self.backend,
            "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
            "speedups": speedups(self.rows),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThroughputTable:
        known = set(ThroughputRow.__dataclass_fields__)
        rows = [ThroughputRow(**{k: v for k, v in r.items() if k in known}) for r in data["rows"]]
        return cls(data["device"], data["backend"], rows, list(data["notes"]))


def speedups(rows: Sequence[ThroughputRow]) -> list[dict[str, Any]]:
    """FP8 (either recipe) over BF16 (same model and shape) and student over teacher (same precision and
    shape), by output tokens per second."""
    measured = {
        (r.model, r.precision, r.batch_size, r.input_len, r.output_len): r for r in rows if not r.skipped
    }
    out: list[dict[str, Any]] = []
    for (model, precision, b, i, o), row in measured.items():
        shape = {"batch_size": b, "input_len": i, "output_len": o}
        if precision in fp8.FP8_PRECISIONS and (model, "bf16", b, i, o) in measured:
            base = measured[(model, "bf16", b, i, o)]
            ratio = row.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0
            out.append({"kind": f"{precision}/bf16", "model": model, **shape, "speedup": ratio})
        if model == "student" and ("teacher", precision, b, i, o) in measured:
            base = measured[("teacher", precision, b, i, o)]
            ratio = row.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0
            out.append({"kind": "student/teacher", "precision": precision, **shape, "speedup": ratio})
    return out


# --- devices and precisions ----------------------------------------------------------------------


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def skip_reason(precision: str, device: str | torch.device, capability=fp8.cuda_capability) -> str:
    """Why `precision` is not measured on `device` ("" when it is)."""
    device = torch.device(device)
    if device.type == "cpu":
        return "" if precision == "fp32" else f"{precision} is not measured on cpu (float32 only)"
    if precision in fp8.FP8_PRECISIONS:
        return fp8.fp8_unavailable(device, capability)
    return ""


def default_grid(device: str | torch.device) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    if torch.device(device).type == "cpu":
        return CPU_BATCH_SIZES, CPU_LENGTHS
    return GPU_BATCH_SIZES, GPU_LENGTHS


def default_precisions(device: str | torch.device) -> list[str]:
    return ["fp32"] if torch.device(device).type == "cpu" else list(GPU_PRECISIONS)


def default_mode(device: str | torch.device) -> str:
    """CUDA graphs of the eager step on a GPU (seconds to build); eager on a CPU."""
    return "graph" if torch.device(device).type == "cuda" else "eager"


# --- measuring -----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_prompts(vocab: int, batch_size: int, input_len: int, device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch_size, input_len), generator=generator).to(device)


@torch.inference_mode()
def time_generate(
    model: nn.Module, batch_size: int, input_len: int, output_len: int, seed: int = 0, repeats: int = 1
) -> decode.DecodeTiming:
    """The fallback: eager `generate` (dynamic cache); TTFT from a 1-token call, decode from the rest."""
    device = next(model.parameters()).device
    ids = random_prompts(model.config.vocab_size, batch_size, input_len, device, seed)
    pad = getattr(model.config, "pad_token_id", None) or 0

    def run(n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            use_cache=True, pad_token_id=pad,
        )  # fmt: skip
        _sync(device)
        if out.shape[1] - input_len != n:
            raise RuntimeError(f"generate produced {out.shape[1] - input_len} tokens instead of {n}")
        return time.perf_counter() - start

    run(min(output_len, 4))  # warm-up of the same shape
    best = min((run(1), run(output_len)) for _ in range(max(1, repeats)))
    return decode.DecodeTiming(best[0], max(0.0, best[1] - best[0]), batch_size, output_len)


def time_static(
    model: nn.Module, batch_size: int, input_len: int, output_len: int, mode: str, seed: int = 0,
    repeats: int = 1,
) -> decode.DecodeTiming:  # fmt: skip
    """The fastest of `repeats` timed generations on a StaticDecoder (after its warm-up)."""
    device = next(model.parameters()).device
    ids = random_prompts(model.config.vocab_size, batch_size, input_len, device, seed)
    decoder = decode.StaticDecoder(model, batch_size, input_len + output_len, mode=mode)
    try:
        decoder.warm_up(ids)
        return min((decoder.time(ids, output_len) for _ in range(max(1, repeats))), key=lambda t: t.seconds)
    finally:
        del decoder
        gc.collect()


def measure_model(
    model: nn.Module,
    label: str,
    precision: str,
    batch_sizes: Sequence[int],
    lengths: Sequence[tuple[int, int]],
    on_row: Callable[[ThroughputRow], None] | None = None,
    repeats: int = 1,
    mode: str | None = None,
    compile_fp8_regions: bool = True,
) -> list[ThroughputRow]:
    """Rows for one model already in the precision named (the caller casts or quantises it). FP8 rows on
    a GPU compile the decoder blocks' linears and MLPs first (fusing the per-token quantisation)."""
    device = next(model.parameters()).device
    mode = mode or default_mode(device)
    if precision in fp8.FP8_PRECISIONS and device.type == "cuda" and mode == "graph" and compile_fp8_regions:
        decode.compile_block_regions(model)
    params = sum(p.numel() for p in model.parameters())
    shape = roofline.Shape.of(model.config)
    name = device_name(device)
    rows = []
    for input_len, output_len in lengths:
        for batch_size in batch_sizes:
            row = ThroughputRow(label, "torch", precision, batch_size, input_len, output_len, params=params)
            row.device, row.mode = name, mode
            row.roofline_tpot_s = (
                roofline.roofline_tpot(shape, precision, batch_size, input_len, output_len, name) or 0.0
            )
            try:
                if mode == "generate":
                    t = time_generate(model, batch_size, input_len, output_len, repeats=repeats)
                else:
                    try:
                        t = time_static(model, batch_size, input_len, output_len, mode, repeats=repeats)
                    except torch.cuda.OutOfMemoryError:
                        raise
                    except RuntimeError as exc:  # a step CUDA graphs cannot capture: eager steps, said so
                        if mode != "graph":
                            raise
                        first = (str(exc).strip().splitlines() or [""])[0][:120]
                        log.warning("CUDA graph capture failed (%s); eager decode steps instead", first)
                        row.mode = f"eager (graph capture failed: {first})"
                        t = time_static(model, batch_size, input_len, output_len, "eager", repeats=repeats)
                row.seconds, row.tokens_per_s = t.seconds, t.tokens_per_s
                row.ttft_s, row.tpot_s = t.ttft_s, t.tpot_s
            except torch.cuda.OutOfMemoryError:
                row.skipped = "out of GPU memory"
                torch.cuda.empty_cache()
            log.info(
                "%s %s b=%d in=%d out=%d: %.1f tok/s, TPOT %.2f ms",
                label, precision, batch_size, input_len, output_len, row.tokens_per_s, row.tpot_s * 1e3,
            )  # fmt: skip
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def prepare(model: nn.Module, precision: str, device: str | torch.device) -> nn.Module:
    """The model moved to `device` in `precision` (fp32 / bf16 / fp16; fp8 / fp8-wo = bf16 + torchao's
    FP8 on the decoder blocks' linears)."""
    device = torch.device(device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    model = model.to(device=device, dtype=dtypes.get(precision, torch.bfloat16))
    if precision in fp8.FP8_PRECISIONS:
        fp8.quantize(model, precision)
    model.eval()
    return model


def measure(
    models: dict[str, Any],
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] | None = None,
    lengths: Sequence[tuple[int, int]] | None = None,
    precisions: Sequence[str] | None = None,
    on_row: Callable[[ThroughputRow], None] | None = None,
    repeats: int = 1,
    mode: str | None = None,
) -> ThroughputTable:
    """Measure each model (label -> a zero-argument function returning a fresh float32/bf16 model on CPU
    or on `device`) at each precision; one model in memory at a time. A precision the device cannot
    measure gets rows that say why."""
    device = torch.device(device)
    default_b, default_l = default_grid(device)
    batch_sizes = tuple(batch_sizes or default_b)
    lengths = tuple(lengths or default_l)
    wanted = list(precisions or default_precisions(device))
    table = ThroughputTable(device_name(device), "torch")
    if device.type == "cpu":
        table.notes.append(CPU_WARNING)
    elif roofline.bandwidth(table.device) is None:
        table.notes.append(f"no roofline: the memory bandwidth of {table.device} is not in ablate's table")
    for label, factory in models.items():
        for precision in wanted:
            reason = skip_reason(precision, device)
            if reason:
                table.rows += [
                    ThroughputRow(label, "torch", precision, b, i, o, device=table.device, skipped=reason)
                    for i, o in lengths
                    for b in batch_sizes
                ]
                continue
            model = None
            try:
                model = prepare(factory(), precision, device)
                table.rows += measure_model(
                    model, label, precision, batch_sizes, lengths, on_row, repeats, mode
                )
            except Exception as exc:  # noqa: BLE001 - one failing precision must not lose the others' rows
                text = str(exc).strip()
                message = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
                log.warning("%s %s failed: %s", label, precision, message)
                table.notes.append(f"{label} {precision}: {message}")
                done = {
                    (r.batch_size, r.input_len, r.output_len)
                    for r in table.rows
                    if r.model == label and r.precision == precision
                }
                table.rows += [
                    ThroughputRow(label, "torch", precision, b, i, o, device=table.device,
                                  skipped=f"failed: {message}"[:200])
                    for i, o in lengths
                    for b in batch_sizes
                    if (b, i, o) not in done
                ]  # fmt: skip
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return table


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}" if seconds else "-"


def format_table(table: ThroughputTable) -> list[str]:
    """Markdown lines: one row per measurement (with its roofline), then the speedups and notes."""
    lines = [
        f"Backend: {table.backend} on {table.device}. TTFT: prefill of the batch; TPOT: one decode step; "
        "roofline: weights' + KV cache's bytes per step / memory bandwidth.",
        "",
        "| model | precision | batch | input | output | output tok/s | TTFT ms | TPOT ms | roofline TPOT ms | TPOT / roofline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.rows:
        head = f"| {r.model} | {r.precision} | {r.batch_size} | {r.input_len} | {r.output_len} |"
        if r.skipped:
            lines.append(f"{head} - | - | - | {_ms(r.roofline_tpot_s)} | {r.skipped} |")
            continue
        ratio = f"{r.roofline_ratio:.2f}" if r.roofline_ratio else "-"
        lines.append(
            f"{head} {r.tokens_per_s:,.1f} | {_ms(r.ttft_s)} | {_ms(r.tpot_s)} | {_ms(r.roofline_tpot_s)} | {ratio} |"
        )
    ups = speedups(table.rows)
    if ups:
        lines += ["", "| speedup | of | batch | input | output | x |", "|---|---|---:|---:|---:|---:|"]
        for s in ups:
            who = s.get("model") or s.get("precision")
            lines.append(
                f"| {s['kind']} | {who} | {s['batch_size']} | {s['input_len']} | {s['output_len']} | {s['speedup']:.2f} |"
            )
    for note in table.notes:
        lines += ["", f"Note: {note}"]
    return lines
