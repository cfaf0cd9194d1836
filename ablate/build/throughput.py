"""Generation throughput with transformers' own `generate` (the torch backend of `ablate build`).

The same table the TensorRT-LLM backend fills (model x precision x batch size x input/output length,
output tokens per second), measured on any machine: float32 on CPU; BF16 and FP8 on a CUDA GPU (FP8
where the GPU has FP8 tensor cores, compute capability 8.9 or higher: Ada, Hopper, Blackwell).

FP8 here is W8A8 like TensorRT-LLM's FP8 recipe: every linear layer of the decoder blocks keeps its
weight as float8_e4m3fn with one scale per output channel, quantises its input per token at run time,
and multiplies with `torch._scaled_mm` (FP8 tensor cores, BF16 output). Embeddings, norms and lm_head
stay BF16 (as TensorRT-LLM keeps lm_head by default). Attention math and the KV cache stay BF16.

Generation is greedy with a fixed output length (`min_new_tokens == max_new_tokens`), on random
prompt tokens, after one warm-up call of the same shape; a row's throughput is
batch x output tokens / wall time of the whole `generate` call (prefill included), as trtllm-bench
reports output throughput. Weights' values do not change the timing, so random weights are fine for
benchmarks of architectures whose checkpoints are not on the machine.

Only torch and transformers are imported, so bench/build_throughput.py runs on a bare GPU machine.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

FP8_MAX = 448.0  # largest finite float8_e4m3fn
CPU_BATCH_SIZES = (1, 4)
CPU_LENGTHS = ((32, 32),)
GPU_BATCH_SIZES = (1, 8, 32)
GPU_LENGTHS = ((128, 128), (512, 128))
CPU_WARNING = (
    "CPU figures are indicative only: on a shared or busy CPU they move by tens of percent between runs; "
    "compare models by their GPU rows"
)


@dataclass
class ThroughputRow:
    model: str  # "student" / "teacher" or any label
    backend: str  # "torch" / "trtllm"
    precision: str  # "fp32" / "bf16" / "fp8"
    batch_size: int
    input_len: int
    output_len: int
    seconds: float = 0.0
    tokens_per_s: float = 0.0  # output tokens per second
    params: int = 0
    device: str = ""
    skipped: str = ""  # why this row was not measured (empty when it was)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        return cls(
            data["device"], data["backend"], [ThroughputRow(**r) for r in data["rows"]], list(data["notes"])
        )


def speedups(rows: Sequence[ThroughputRow]) -> list[dict[str, Any]]:
    """FP8 over BF16 (same model and shape) and student over teacher (same precision and shape)."""
    measured = {
        (r.model, r.precision, r.batch_size, r.input_len, r.output_len): r for r in rows if not r.skipped
    }
    out: list[dict[str, Any]] = []
    for (model, precision, b, i, o), row in measured.items():
        if precision == "fp8" and (model, "bf16", b, i, o) in measured:
            base = measured[(model, "bf16", b, i, o)]
            out.append(
                {
                    "kind": "fp8/bf16",
                    "model": model,
                    "batch_size": b,
                    "input_len": i,
                    "output_len": o,
                    "speedup": row.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0,
                }
            )
        if model == "student" and ("teacher", precision, b, i, o) in measured:
            base = measured[("teacher", precision, b, i, o)]
            out.append(
                {
                    "kind": "student/teacher",
                    "precision": precision,
                    "batch_size": b,
                    "input_len": i,
                    "output_len": o,
                    "speedup": row.tokens_per_s / base.tokens_per_s if base.tokens_per_s else 0.0,
                }
            )
    return out


# --- devices and precisions ----------------------------------------------------------------------


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def fp8_supported(device: str | torch.device) -> bool:
    """FP8 tensor-core matmuls: CUDA with compute capability >= 8.9 and a torch that has _scaled_mm."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def precisions_for(device: str | torch.device) -> list[str]:
    """What the torch backend measures on this device: fp32 on CPU; bf16 (+ fp8 where supported) on GPUs."""
    device = torch.device(device)
    if device.type == "cpu":
        return ["fp32"]
    out = ["bf16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    if fp8_supported(device):
        out.append("fp8")
    return out


def default_grid(device: str | torch.device) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    if torch.device(device).type == "cpu":
        return CPU_BATCH_SIZES, CPU_LENGTHS
    return GPU_BATCH_SIZES, GPU_LENGTHS


# --- FP8 linear ----------------------------------------------------------------------------------


class FP8Linear(nn.Module):
    """W8A8 FP8 linear: float8_e4m3fn weight with per-output-channel scales, inputs quantised per token.

    `emulate=True` dequantises and multiplies in the input dtype (same rounding of weights and inputs,
    for CPUs and tests); otherwise `torch._scaled_mm` runs the product on FP8 tensor cores.
    """

    def __init__(self, linear: nn.Linear, emulate: bool = False, rowwise: bool = True):
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        amax = weight.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
        scale = amax / FP8_MAX  # [out, 1]
        self.register_buffer(
            "weight_fp8", (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        )
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())  # [1, out]
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )
        self.out_dtype = weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        self.emulate = emulate
        self.rowwise = rowwise

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3, emulate={self.emulate}"

    def quantize_input(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amax = x2d.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)
        scale = amax / FP8_MAX  # [M, 1]
        q = (x2d.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return q, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2d = x.reshape(-1, self.in_features)
        q, scale = self.quantize_input(x2d)
        if self.emulate:
            w = self.weight_fp8.float() * self.weight_scale.t()
            out = ((q.float() * scale) @ w.t()).to(x.dtype)
        elif self.rowwise:
            out = torch._scaled_mm(
                q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=self.out_dtype
            )
        else:  # one scale per tensor: the product runs unscaled, the per-channel scales are applied after
            s_a = scale.max()
            q = (x2d.float() / s_a).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            one = torch.ones((), device=x.device, dtype=torch.float32)
            out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=s_a, scale_b=one, out_dtype=torch.float32)
            out = (out * self.weight_scale).to(self.out_dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)


def _rowwise_works(device: torch.device) -> bool:
    """Row-wise scaled FP8 products need a recent torch and GPU; probe once with a tiny product."""
    try:
        a = torch.zeros(16, 32, device=device).to(torch.float8_e4m3fn)
        b = torch.zeros(32, 32, device=device).to(torch.float8_e4m3fn)
        torch._scaled_mm(
            a,
            b.t(),
            scale_a=torch.ones(16, 1, device=device),
            scale_b=torch.ones(1, 32, device=device),
            out_dtype=torch.bfloat16,
        )
        return True
    except (RuntimeError, TypeError):
        return False


def quantize_fp8(model: nn.Module, emulate: bool = False, skip: Iterable[str] = ("lm_head",)) -> int:
    """Replace the decoder's nn.Linear layers by FP8Linear in place; returns how many were replaced.

    A layer whose dimensions are not multiples of 16 (what FP8 tensor cores need) stays as it is.
    """
    skip = tuple(skip)
    device = next(model.parameters()).device
    rowwise = emulate or _rowwise_works(device)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(name == s or name.endswith("." + s) for s in skip)
    ]
    replaced = 0
    for name, module in targets:
        if not emulate and (module.in_features % 16 or module.out_features % 16):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FP8Linear(module, emulate=emulate, rowwise=rowwise))
        replaced += 1
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return replaced


# --- measuring -----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_generate(
    model: nn.Module, batch_size: int, input_len: int, output_len: int, seed: int = 0, repeats: int = 1
) -> float:
    """Seconds for one greedy `generate` of exactly `output_len` new tokens for `batch_size` prompts
    (the fastest of `repeats` timed calls)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, input_len), generator=generator).to(device)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=output_len,
        min_new_tokens=output_len,
        do_sample=False,
        use_cache=True,
        pad_token_id=getattr(model.config, "pad_token_id", None) or 0,
    )
    # warm-up of the same shape (allocator, kernels' autotuning), then the timed call
    model.generate(
        ids, **{**kwargs, "max_new_tokens": min(output_len, 4), "min_new_tokens": min(output_len, 4)}
    )
    _sync(device)
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = model.generate(ids, **kwargs)
        _sync(device)
        best = min(best, time.perf_counter() - start)
        produced = out.shape[1] - input_len
        if produced != output_len:
            raise RuntimeError(f"generate produced {produced} tokens instead of {output_len}")
    return best


def measure_model(
    model: nn.Module,
    label: str,
    precision: str,
    batch_sizes: Sequence[int],
    lengths: Sequence[tuple[int, int]],
    on_row: Callable[[ThroughputRow], None] | None = None,
    repeats: int = 1,
) -> list[ThroughputRow]:
    """Rows for one model already in the precision named (the caller casts or quantises it)."""
    device = next(model.parameters()).device
    params = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith("weight_fp8")
    )
    rows = []
    for input_len, output_len in lengths:
        for batch_size in batch_sizes:
            row = ThroughputRow(label, "torch", precision, batch_size, input_len, output_len, params=params)
            row.device = device_name(device)
            try:
                row.seconds = time_generate(model, batch_size, input_len, output_len, repeats=repeats)
                row.tokens_per_s = batch_size * output_len / row.seconds
            except torch.cuda.OutOfMemoryError:
                row.skipped = "out of GPU memory"
                torch.cuda.empty_cache()
            log.info(
                "%s %s b=%d in=%d out=%d: %.1f tok/s",
                label,
                precision,
                batch_size,
                input_len,
                output_len,
                row.tokens_per_s,
            )
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def prepare(model: nn.Module, precision: str, device: str | torch.device) -> nn.Module:
    """The model moved to `device` in `precision` (fp32 / bf16 / fp16 / fp8 = bf16 + FP8 linears)."""
    device = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}[
        precision
    ]
    model = model.to(device=device, dtype=dtype)
    if precision == "fp8":
        quantize_fp8(model, emulate=device.type != "cuda")
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
) -> ThroughputTable:
    """Measure each model (label -> a zero-argument function returning a fresh float32/bf16 model on CPU
    or on `device`) at each precision the device supports; one model in memory at a time."""
    device = torch.device(device)
    default_b, default_l = default_grid(device)
    batch_sizes = tuple(batch_sizes or default_b)
    lengths = tuple(lengths or default_l)
    supported = precisions_for(device)
    wanted = list(precisions or supported)
    table = ThroughputTable(device_name(device), "torch")
    if device.type == "cpu":
        table.notes.append("CPU: float32 only (BF16 and FP8 are measured on a CUDA GPU)")
        table.notes.append(CPU_WARNING)
    elif "fp8" not in supported:
        table.notes.append("this GPU has no FP8 tensor cores (compute capability < 8.9): BF16 only")
    for label, factory in models.items():
        for precision in wanted:
            if precision not in supported:
                for input_len, output_len in lengths:
                    for b in batch_sizes:
                        table.rows.append(
                            ThroughputRow(label, "torch", precision, b, input_len, output_len, device=table.device,
                                          skipped=f"{precision} is not measured on {table.device}")
                        )  # fmt: skip
                continue
            model = None
            try:
                model = prepare(factory(), precision, device)
                table.rows += measure_model(model, label, precision, batch_sizes, lengths, on_row, repeats)
            except Exception as exc:  # noqa: BLE001 - one failing precision must not lose the others' rows
                message = (
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                )
                log.warning("%s %s failed: %s", label, precision, message)
                table.notes.append(f"{label} {precision}: {message}")
                done = {
                    (r.batch_size, r.input_len, r.output_len)
                    for r in table.rows
                    if r.model == label and r.precision == precision
                }
                for input_len, output_len in lengths:
                    for b in batch_sizes:
                        if (b, input_len, output_len) not in done:
                            table.rows.append(
                                ThroughputRow(label, "torch", precision, b, input_len, output_len, device=table.device,
                                              skipped=f"failed: {message}"[:200])
                            )  # fmt: skip
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return table


def format_table(table: ThroughputTable) -> list[str]:
    """Markdown lines: one row per measurement, then the speedups."""
    lines = [
        f"Backend: {table.backend} on {table.device}.",
        "",
        "| model | precision | batch | input | output | output tok/s | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in table.rows:
        if r.skipped:
            lines.append(
                f"| {r.model} | {r.precision} | {r.batch_size} | {r.input_len} | {r.output_len} | - | {r.skipped} |"
            )
        else:
            lines.append(
                f"| {r.model} | {r.precision} | {r.batch_size} | {r.input_len} | {r.output_len} | "
                f"{r.tokens_per_s:,.1f} | {r.seconds:.3f} |"
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
