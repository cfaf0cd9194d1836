"""Damage a published artifact the way the outside probe did: bytes of one tensor inside a safetensors
file overwritten with NaN, in place (same size, so only a checksum can tell)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

NAN_BITS = {
    "F32": struct.pack("<I", 0x7FC00000),
    "BF16": struct.pack("<H", 0x7FC0),
    "F16": struct.pack("<H", 0x7E00),
}


def nan_into_tensor(path: Path, name_part: str = "embed_tokens") -> str:
    """Overwrite every element of the first tensor whose name contains `name_part` with NaN; its name."""
    with open(path, "r+b") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        name = next(k for k in header if k != "__metadata__" and name_part in k)
        begin, end = header[name]["data_offsets"]
        nan = NAN_BITS[header[name]["dtype"]]
        f.seek(8 + header_len + begin)
        f.write(nan * ((end - begin) // len(nan)))
    return name
