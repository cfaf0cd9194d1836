"""Alignment data: the records of a local JSONL or Parquet file (or a shipped set), checked for the columns
their method needs, normalised to TRL's conversational prompt/completion form, and split into training
and held-out records by a hash of each record (so a record's side never depends on the others).

SFT records carry `messages` (chat turns, the last one the assistant's answer); preference records carry
`prompt`, `chosen` and `rejected`, each a string or chat turns. The shipped sets are made by
ablate/align/make_sets.py (see data/README.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.errors import AblateError
from ablate.spec.align import PREFERENCE_METHODS

DATA_DIR = Path(__file__).parent / "data"
BUILTIN_SETS = {
    "builtin:pydoc-instruct": DATA_DIR / "pydoc_instruct.jsonl",
    "builtin:pydoc-prefs": DATA_DIR / "pydoc_prefs.jsonl",
}
MAX_RECORDS = 1_000_000
SFT_COLUMNS = ("messages",)
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


class AlignDataError(AblateError):
    """Alignment data a user can fix: a missing file, a missing column, a malformed record."""


@dataclass(frozen=True)
class AlignSet:
    """One stage's data, normalised: `prompt` and `completion` (sft) or `prompt`, `chosen`, `rejected`
    (preferences), every value a list of chat turns."""

    ref: str
    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]


def columns_for(method: str) -> tuple[str, ...]:
    return PREFERENCE_COLUMNS if method in PREFERENCE_METHODS else SFT_COLUMNS


def resolve(ref: str, base_dir: str | Path | None = None) -> Path:
    """The file a stage's `data` names: a shipped set, or a path (relative to the spec's folder)."""
    if ref in BUILTIN_SETS:
        return BUILTIN_SETS[ref]
    if ref.startswith("builtin:"):
        raise AlignDataError(
            f"unknown alignment set {ref!r} (expected one of {', '.join(BUILTIN_SETS)}, or a .jsonl/.parquet file)"
        )
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    if not path.is_file():
        raise AlignDataError(f"alignment data {ref!r}: no such file (expected a .jsonl or .parquet file)")
    if not path.name.endswith((".jsonl", ".parquet")):
        raise AlignDataError(f"alignment data {ref!r}: expected a .jsonl or .parquet file")
    return path


def fingerprint(path: Path) -> str:
    """The file's content hash: part of the identity of every stage that trains or evaluates on it."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_records(path: Path, ref: str) -> list[dict[str, Any]]:
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()[:MAX_RECORDS]
    rows = []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise AlignDataError(f"{ref}:{number}: not a JSON record ({exc})") from None
            if not isinstance(row, dict):
                raise AlignDataError(f"{ref}:{number}: expected a JSON object per line")
            rows.append(row)
            if len(rows) >= MAX_RECORDS:
                break
    return rows


def check_columns(rows: list[dict[str, Any]], method: str, ref: str) -> None:
    """Every record has the columns its method reads (the first one that lacks them is named)."""
    needed = columns_for(method)
    if not rows:
        raise AlignDataError(f"alignment data {ref!r} holds no records")
    for i, row in enumerate(rows):
        missing = [c for c in needed if row.get(c) in (None, "", [])]
        if missing:
            raise AlignDataError(
                f"alignment data {ref!r}, record {i + 1}: no {', '.join(missing)} (method {method} needs "
                f"{', '.join(needed)}; columns found: {', '.join(sorted(row)) or 'none'})"
            )


def _turns(value: Any, role: str, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(t, dict) and "role" in t and "content" in t for t in value):
        return [{"role": str(t["role"]), "content": str(t["content"])} for t in value]
    raise AlignDataError(f"{where}: expected a string or a list of {{role, content}} turns")


def normalise(row: dict[str, Any], method: str, where: str) -> dict[str, Any]:
    """TRL's conversational prompt/completion (sft) or prompt/chosen/rejected (preferences) form."""
    if method in PREFERENCE_METHODS:
        return {
            "prompt": _turns(row["prompt"], "user", where),
            "chosen": _turns(row["chosen"], "assistant", where),
            "rejected": _turns(row["rejected"], "assistant", where),
        }
    turns = _turns(row["messages"], "user", where)
    if len(turns) < 2 or turns[-1]["role"] != "assistant":
        raise AlignDataError(
            f"{where}: messages must end with the assistant's turn, after at least one other"
        )
    return {"prompt": turns[:-1], "completion": turns[-1:]}


def is_held_out(row: dict[str, Any], share: float) -> bool:
    digest = hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def load_set(ref: str, method: str, held_out: float, base_dir: str | Path | None = None) -> AlignSet:
    """A stage's data, checked, normalised and split."""
    rows = read_records(resolve(ref, base_dir), ref)
    check_columns(rows, method, ref)
    train, held = [], []
    for i, row in enumerate(rows):
        item = normalise(row, method, f"{ref}, record {i + 1}")
        (held if is_held_out(row, held_out) else train).append(item)
    if not held or not train:
        raise AlignDataError(
            f"alignment data {ref!r}: {len(rows)} records leave {len(train)} for training and {len(held)} held "
            "out at this held_out share (expected at least one of each; add records or change held_out)"
        )
    return AlignSet(ref, train, held)
