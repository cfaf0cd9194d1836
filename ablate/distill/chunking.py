"""How many positions of logits the chunked losses make at once (`distill.logit_chunk`).

Torch-free, so the plan's memory model (ablate.plan.memory) resolves `auto` exactly as the trainer does.

`auto` is a size in bytes of one chunk's fp32 logits, by device:
- CPU: 128 MiB (256 positions at a vocabulary of 131,072): host memory is what tests and benches measure,
  and a CPU gains nothing from bigger chunks.
- a GPU: 2 GiB (4096 positions at 131,072, 16,384 at 32,000). Each chunk adds its product into the
  head's fp32 gradient, a pass over vocabulary x hidden floats (1 GiB at 131,072 x 2048); that pass is
  paid once per chunk, so small chunks make the loss memory-bound. On one H200 (1.5B/1.0B pair, seq
  8192 x 4, compiled layers) 4096 positions gave 39.5% MFU against 33.1% at 256 (bench/distill_fsdp.py),
  for about 11 GiB more peak memory.
"""

from __future__ import annotations

MIB = 2**20
AUTO_CHUNK_BYTES = {"cpu": 128 * MIB, "gpu": 2048 * MIB}
FP32_BYTES = 4


def auto_chunk_bytes(device_type: str) -> int:
    """fp32 bytes of one chunk of logits under `auto` on a device of this type ('cpu', 'cuda', ...)."""
    return AUTO_CHUNK_BYTES["cpu" if device_type == "cpu" else "gpu"]


def chunk_positions(setting: int | str | None, vocab: int, device_type: str = "cpu") -> int:
    """Positions per chunk: a positive int as given; 'auto' (or None): about `auto_chunk_bytes` of fp32
    logits on this device type."""
    if setting is None or setting == "auto":
        return max(1, auto_chunk_bytes(device_type) // (FP32_BYTES * int(vocab)))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting <= 0:
        raise ValueError(f"logit_chunk must be a positive number of positions or 'auto' (got {setting!r})")
    return setting
