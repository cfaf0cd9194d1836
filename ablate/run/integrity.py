"""Content checksums of an artifact folder: computed once when it is published, verified before reuse.

Why sha256 with 8 MiB reads: hashlib's sha256 runs on the CPU's SHA extensions (1.7 GB/s of one core on
the development machine from memory, blake2b 0.8 GB/s; 0.75 CPU-seconds per GiB from a file), about two
cold reads of the same bytes (bench/artifact_verify.py): a 16 GB 8B checkpoint costs ~11 s of one core
to hash at publish, and as much again only when its files changed or were copied (see the stamp below).

Why a stamp: a folder that verified keeps `<stamp dir>/<hash>.json` holding the manifest's digest and each
file's (size, mtime_ns, ctime_ns, inode). A later verification whose files all still stat the same is
settled without reading them, so the many loads of one artifact in a submission (every trial loads the
pruned student and the teacher) hash it once. Any write to a file moves its ctime, which no user call
can set back, and a replaced file has a new inode: a changed file is always read again. The publisher
writes the stamp itself (it just hashed the bytes), so a fresh artifact never needs a second read.

An artifact whose manifest has no checksums (published before ablate recorded them) cannot be verified
and is refused like a damaged one: reusing unverifiable bytes is what this module exists to prevent.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ablate.errors import RunError

ALGORITHM = "sha256"
CHUNK = 8 * 2**20  # large sequential reads: the hash, not the syscalls, sets the pace

__all__ = ["ALGORITHM", "ArtifactCorrupt", "digest_bytes", "file_digest", "folder_checksums", "verify_folder"]


class ArtifactCorrupt(RunError):
    """An artifact's bytes differ from its manifest (changed, truncated, missing or extra files) or carry
    no checksums to compare: it is never reused. The message names the artifact, its stage, the files and
    the command that recomputes it."""

    def __init__(self, h: str, path: str, problems: list[str], spec: str | None = None) -> None:
        self.hash, self.path, self.problems, self.spec = h, path, list(problems), spec
        self.kind = h.split("-", 1)[0] if "-" in h else "unknown"
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(
            f"artifact {h} ({self.kind} stage) at {path} failed verification: {shown}. It is not reused; "
            f"recompute it with `ablate submit {spec or 'SPEC'} --recompute {h}` "
            "(the stages made from it run again too)"
        )

    def for_spec(self, spec: str) -> ArtifactCorrupt:
        """The same error, its command naming the spec the user submitted."""
        return ArtifactCorrupt(self.hash, self.path, self.problems, spec)


def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in CHUNK-sized pieces into one reused buffer."""
    h = hashlib.new(ALGORITHM)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def digest_bytes(data: bytes) -> str:
    return hashlib.new(ALGORITHM, data).hexdigest()


def folder_files(folder: Path, skip: Iterable[str] = ()) -> dict[str, Path]:
    """Relative posix path -> file, for every regular file under `folder` except the names in `skip`."""
    skipped = set(skip)
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in skipped
    }


def folder_checksums(folder: Path, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The manifest's `files`: path, size and sha256 of every file (sorted by path)."""
    return [
        {"path": rel, "size": p.stat().st_size, ALGORITHM: file_digest(p)}
        for rel, p in folder_files(folder, skip).items()
    ]


# ------------------------------------------------------------------------------------------- stamps
def _stat_key(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _stamp(folder: Path, manifest_bytes: bytes, files: Iterable[str], marker: str) -> dict[str, Any]:
    return {
        "manifest": digest_bytes(manifest_bytes),
        "files": {rel: _stat_key(folder / rel) for rel in [*files, marker]},
    }


def write_stamp(stamp_path: Path, folder: Path, manifest_bytes: bytes, marker: str) -> None:
    """Record that `folder` matches its manifest as of now (best effort: a read-only store just re-hashes)."""
    try:
        files = [f["path"] for f in json.loads(manifest_bytes)["files"]]
        _save_stamp(stamp_path, _stamp(folder, manifest_bytes, files, marker))
    except (OSError, ValueError, KeyError, TypeError):
        pass


def _save_stamp(stamp_path: Path, stamp: dict[str, Any]) -> None:
    try:
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp_path.with_name(f".{stamp_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, stamp_path)
    except OSError:
        pass


def _stamp_holds(stamp_path: Path, stamp: dict[str, Any]) -> bool:
    try:
        return json.loads(stamp_path.read_text()) == stamp
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- checking
def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """Why a manifest cannot vouch for its files (empty when it can)."""
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and "path" in f for f in files):
        return ["its manifest lists no files"]
    if manifest.get("checksum") != ALGORITHM or not all(
        isinstance(f.get(ALGORITHM), str) and isinstance(f.get("size"), int) for f in files
    ):
        return [
            f"its manifest has no {ALGORITHM} checksums (published by an ablate that did not record them), "
            "so its bytes cannot be verified"
        ]
    return []


def listing_problems(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    """Missing, extra and wrongly sized files (cheap: names and sizes only)."""
    problems = [f"{rel}: missing" for rel in expected if rel not in found]
    problems += [
        f"{rel}: not in the manifest (added after publishing)" for rel in found if rel not in expected
    ]
    problems += [
        f"{rel}: {found[rel]} bytes, the manifest says {size} (truncated or extended)"
        for rel, size in expected.items()
        if rel in found and found[rel] != size
    ]
    return problems


def verify_folder(
    h: str, folder: Path, marker: str, stamp_path: Path | None = None, shown_path: str | None = None
) -> None:
    """Raise ArtifactCorrupt unless every file of `folder` has the size and sha256 its manifest (`marker`)
    records and no file was added; a valid stamp (see the module docstring) skips the hashing."""
    where = shown_path or str(folder)
    manifest_bytes = (folder / marker).read_bytes()
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError:
        raise ArtifactCorrupt(h, where, [f"its manifest {marker} is not valid JSON"]) from None
    problems = manifest_problems(manifest)
    if problems:
        raise ArtifactCorrupt(h, where, problems)
    entries = {f["path"]: f for f in manifest["files"]}
    on_disk = folder_files(folder, skip=[marker])
    problems = listing_problems(
        {rel: f["size"] for rel, f in entries.items()}, {rel: p.stat().st_size for rel, p in on_disk.items()}
    )
    if problems:
        raise ArtifactCorrupt(h, where, problems)
    # the stat taken before hashing is the one stamped: a write during the hashing invalidates the stamp
    stamp = _stamp(folder, manifest_bytes, list(entries), marker)
    if stamp_path is not None and _stamp_holds(stamp_path, stamp):
        return
    problems = [
        f"{rel}: content changed ({ALGORITHM} {digest[:12]}..., the manifest says {entries[rel][ALGORITHM][:12]}...)"
        for rel, p in on_disk.items()
        if (digest := file_digest(p)) != entries[rel][ALGORITHM]
    ]
    if problems:
        raise ArtifactCorrupt(h, where, problems)
    if stamp_path is not None:
        _save_stamp(stamp_path, stamp)
