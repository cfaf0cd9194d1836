"""A problem with a spec, located in its file: the one shape every refusal of `ablate validate` takes."""

from __future__ import annotations

from dataclasses import dataclass

from ablate.spec.limits import SHOW_CHARS

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located in its file."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def shorten(text: str, limit: int = SHOW_CHARS) -> str:
    """A value cut for a message: a 100 KB key or string must not become a 100 KB error line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dotted(path: Path_) -> str:
    """`sweep.grid[0].distill.lr`, from ("sweep", "grid", 0, "distill.lr"); a path 60 levels deep is
    shown by its ends."""
    if len(path) > 12:
        return f"{dotted(path[:6])}...{dotted(path[-3:]).lstrip('.')}"
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{shorten(part)}" if out else shorten(part))
    return out
