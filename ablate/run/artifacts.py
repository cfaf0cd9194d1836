"""Content-addressed artifact store keyed by stage hash.

Layout under the store root (a local directory or any fsspec URL)::

    <root>/<hash>/...            one folder per stage artifact
    <root>/<hash>/_ABLATE_COMPLETE   JSON manifest, written last: the folder counts as complete only with it
    <root>/.tmp/<hash>.<nonce>/  in-flight writes (local stores), renamed into place on success
    <root>/.trash/               folders moved aside before deletion or replacement
    <root>/.verified/<hash>.json the stat of a folder's files when they last verified (ablate.run.integrity)

Local stores publish with one ``os.rename`` of a finished folder (manifest inside), so an artifact appears
complete or not at all, and a crash leaves only a temporary folder that :meth:`ArtifactStore.exists` ignores.
Remote stores (``s3://``, ``gs://``, ...) have no atomic folder rename: the files are uploaded first and the
manifest last, and a folder without its manifest is treated as absent and cleared by the next writer.
Concurrent writers of one hash both succeed; the first to publish wins and the others' output is discarded
(same hash, same inputs, so the same content up to non-determinism).

Integrity: the manifest records the size and sha256 of every file, hashed once while publishing. Every
load verifies them (`local_path` the whole folder, `open` the file it returns), and `verify` is what a
reuse calls; a mismatch, a missing or added file, or a manifest without checksums raises ArtifactCorrupt
naming the artifact and `ablate submit SPEC --recompute HASH`. Repeated loads of an unchanged folder cost
a stat per file (see ablate.run.integrity for why that is safe). Remote stores: `verify` compares the
listing (names, sizes) with the manifest; the bytes are checked when `local_path` downloads them.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ablate.diskspace import translating_write_errors
from ablate.errors import RunError
from ablate.run.integrity import (
    ALGORITHM,
    ArtifactCorrupt,
    digest_bytes,
    folder_checksums,
    listing_problems,
    manifest_problems,
    verify_folder,
    write_stamp,
)

MARKER = "_ABLATE_COMPLETE"
_TMP = ".tmp"
_TRASH = ".trash"
_VERIFIED = ".verified"
OPEN_LIMIT = 256 * 2**20  # open() reads the (small) file whole to verify what it returns
_HASH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

__all__ = ["MARKER", "ArtifactCorrupt", "ArtifactMissing", "ArtifactStore"]


class ArtifactMissing(RunError):
    """The artifact of a stage is not (completely) in the store."""


def _check_hash(h: str) -> str:
    if not isinstance(h, str) or not _HASH_RE.match(h) or ".." in h:
        raise ValueError(f"invalid artifact hash {h!r}: expected letters, digits, '_', '-', '.' (max 128)")
    return h


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _manifest(folder: Path, h: str) -> dict[str, Any]:
    """Files with their sizes and sha256 (hashed here, once per artifact), and where it was made."""
    files = folder_checksums(folder, skip=[MARKER])
    return {
        "hash": h,
        "created": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "bytes": sum(f["size"] for f in files),
        "checksum": ALGORITHM,
        "files": files,
    }


class ArtifactStore:
    """Stage artifacts addressed by hash, on a local directory (default) or an fsspec URL.

    ``root`` is a path (``.ablate/artifacts``) or URL (``file:///...``, ``s3://bucket/prefix``,
    ``memory://x``). ``storage_options`` are passed to fsspec. ``cache_dir`` is where
    :meth:`local_path` downloads remote artifacts (default ``~/.cache/ablate/artifacts``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        root_str = os.fspath(root)
        self.fs, path = fsspec.core.url_to_fs(root_str, **(storage_options or {}))
        self.is_local = isinstance(self.fs, LocalFileSystem)
        if self.is_local:
            self.root = os.path.abspath(os.path.expanduser(path))
            os.makedirs(self.root, exist_ok=True)
        else:
            self.root = path.rstrip("/")
            self.fs.makedirs(self.root, exist_ok=True)
        self._cache_dir = cache_dir

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """The root as a URL (a plain absolute path for local stores)."""
        return self.root if self.is_local else self.fs.unstrip_protocol(self.root)

    def _path(self, h: str) -> str:
        return f"{self.root}/{_check_hash(h)}"

    def path_for(self, h: str) -> str:
        """Where the artifact of ``h`` lives: an absolute path (local) or a URL (remote); it may not exist.

        This is the value to record as a stage's artifact URI.
        """
        p = self._path(h)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    # ------------------------------------------------------------------ queries
    def exists(self, h: str) -> bool:
        """True only for a complete artifact (its manifest, written last, is present)."""
        return bool(self.fs.exists(f"{self._path(h)}/{MARKER}"))

    def manifest(self, h: str) -> dict[str, Any]:
        """The manifest of a complete artifact (files, sizes, when and where it was written)."""
        self._require(h)
        with self.fs.open(f"{self._path(h)}/{MARKER}", "rb") as f:
            raw = f.read()
        try:
            return json.loads(raw.decode())
        except ValueError:
            raise ArtifactCorrupt(h, self.path_for(h), [f"its manifest {MARKER} is not valid JSON"]) from None

    def list(self) -> list[str]:
        """Hashes of all complete artifacts, sorted."""
        out = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if _HASH_RE.match(name) and self.fs.exists(f"{self.root}/{name}/{MARKER}"):
                out.append(name)
        return sorted(out)

    def _require(self, h: str) -> None:
        if not self.exists(h):
            raise ArtifactMissing(
                f"artifact {h} is not complete in {self.url}: run the stage that produces it again "
                "(`ablate submit` re-runs stages whose artifact is missing)"
            )

    # ------------------------------------------------------------------ verifying
    def _stamp_path(self, h: str, base: str | os.PathLike[str] | None = None) -> Path:
        return Path(base if base is not None else self.root) / _VERIFIED / f"{_check_hash(h)}.json"

    def verify(self, h: str) -> None:
        """Raise ArtifactCorrupt unless the complete artifact ``h`` matches its manifest's checksums.

        Local stores check every byte (a stat per file when nothing changed since the last check); remote
        stores check the listing (names and sizes), and the bytes when `local_path` downloads them.
        """
        self._require(h)
        if self.is_local:
            verify_folder(h, Path(self._path(h)), MARKER, self._stamp_path(h))
            return
        manifest = self.manifest(h)
        problems = manifest_problems(manifest)
        if not problems:
            remote = self._path(h)
            found = {
                rel: int(self.fs.size(f"{remote}/{rel}"))
                for rel in self._remote_files(remote)
                if rel != MARKER
            }
            problems = listing_problems({f["path"]: f["size"] for f in manifest["files"]}, found)
        if problems:
            raise ArtifactCorrupt(h, self.path_for(h), problems)

    # ------------------------------------------------------------------ reading
    def local_path(self, h: str) -> Path:
        """A local folder holding the complete, verified artifact ``h``; remote artifacts are downloaded
        to the cache (and downloaded again when the cached copy no longer verifies)."""
        self._require(h)
        if self.is_local:
            self.verify(h)
            return Path(self._path(h))
        cache_root = Path(
            self._cache_dir or os.environ.get("ABLATE_ARTIFACT_CACHE") or "~/.cache/ablate/artifacts"
        ).expanduser()
        target = cache_root / h
        stamp = self._stamp_path(h, cache_root)
        if (target / MARKER).exists():
            try:
                verify_folder(h, target, MARKER, stamp)
                return target
            except ArtifactCorrupt:
                shutil.rmtree(target, ignore_errors=True)  # a damaged cache copy: fetch it again
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{h}.", dir=cache_root))
        try:
            remote = self._path(h)
            for rel in self._remote_files(remote):
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{remote}/{rel}", str(dest))
            verify_folder(h, tmp, MARKER, shown_path=self.path_for(h))
            if self._publish_local(tmp, target):
                write_stamp(stamp, target, (target / MARKER).read_bytes(), MARKER)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def open(self, h: str, name: str, mode: str = "rb") -> IO[Any]:
        """File ``name`` (relative path) of the complete artifact ``h``, read whole and verified against
        the manifest before it is returned (meant for the small JSON records, up to OPEN_LIMIT bytes)."""
        if any(c in mode for c in "wax+"):
            raise ValueError("artifacts are read-only once published; use write() to produce one")
        rel = name.lstrip("/")
        manifest = self.manifest(h)
        problems = manifest_problems(manifest)
        entry = next((f for f in manifest.get("files") or [] if f.get("path") == rel), None)
        if not problems and entry is None:
            raise FileNotFoundError(f"artifact {h} has no file {rel!r} (see its manifest {MARKER})")
        if not problems and entry["size"] > OPEN_LIMIT:
            raise ValueError(
                f"{rel} of artifact {h} is {entry['size']:,} bytes; read it through local_path()"
            )
        if not problems:
            with self.fs.open(f"{self._path(h)}/{rel}", "rb") as f:
                data = f.read(OPEN_LIMIT + 1)
            if len(data) != entry["size"]:
                problems = [
                    f"{rel}: {len(data)} bytes, the manifest says {entry['size']} (truncated or extended)"
                ]
            elif (digest := digest_bytes(data)) != entry[ALGORITHM]:
                problems = [
                    f"{rel}: content changed ({ALGORITHM} {digest[:12]}..., the manifest says {entry[ALGORITHM][:12]}...)"
                ]
        if problems:
            raise ArtifactCorrupt(h, self.path_for(h), problems)
        return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())

    def _remote_files(self, remote: str) -> list[str]:
        files = []
        for p in self.fs.find(remote):
            rel = p[len(remote) :].lstrip("/") if p.startswith(remote) else p.rsplit(remote + "/", 1)[-1]
            if rel:
                files.append(rel)
        # the manifest last, so an interrupted download never looks complete
        return sorted(files, key=lambda r: (r == MARKER, r))

    # ------------------------------------------------------------------ writing
    @contextmanager
    def write(self, h: str, *, overwrite: bool = False) -> Iterator[Path]:
        """Yield an empty local temporary folder; on normal exit publish it atomically as artifact ``h``.

        On an exception nothing is published and the temporary folder is removed. If the artifact is
        already complete when publishing (another writer won), this output is discarded unless
        ``overwrite`` is set, in which case it replaces the existing one.
        """
        _check_hash(h)
        if self.is_local:
            tmp_parent = os.path.join(self.root, _TMP)
            os.makedirs(tmp_parent, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{h}.", dir=tmp_parent))
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f"ablate-{h}."))
        try:
            with translating_write_errors(tmp, f"artifact {h} (to be published as {self.path_for(h)})"):
                yield tmp
                manifest = json.dumps(_manifest(tmp, h), indent=1).encode()
                (tmp / MARKER).write_bytes(manifest)
                if self.is_local:
                    final = Path(self._path(h))
                    if self._publish_local(tmp, final, overwrite=overwrite):
                        # just hashed: a reuse needs no second read unless a file changes
                        write_stamp(self._stamp_path(h), final, manifest, MARKER)
                else:
                    self._publish_remote(tmp, h, overwrite=overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish_local(self, tmp: Path, final: Path, *, overwrite: bool = False) -> bool:
        """Rename `tmp` into place; False when another writer's complete folder is kept instead."""
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        trash = final.parent / _TRASH
        for _ in range(10):
            if final.exists():
                if (final / MARKER).exists() and not overwrite:
                    return False  # another writer published first
                # incomplete leftover (or replacement): move it aside atomically, then delete
                trash.mkdir(exist_ok=True)
                aside = trash / f"{final.name}.{uuid.uuid4().hex}"
                try:
                    os.rename(final, aside)
                except FileNotFoundError:
                    pass  # someone else moved it
                else:
                    shutil.rmtree(aside, ignore_errors=True)
                overwrite = False
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue  # a concurrent writer got there between our check and rename
                raise
            _fsync_dir(str(final.parent))
            return True
        raise RunError(
            f"could not publish artifact {final}: the folder keeps changing under concurrent writers"
        )

    def _publish_remote(self, tmp: Path, h: str, *, overwrite: bool) -> None:
        final = self._path(h)
        if self.exists(h) and not overwrite:
            return
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        for p in sorted(tmp.rglob("*")):
            if p.is_file() and p.name != MARKER:
                rel = p.relative_to(tmp).as_posix()
                self.fs.makedirs(f"{final}/{rel}".rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(p), f"{final}/{rel}")
        self.fs.pipe_file(f"{final}/{MARKER}", (tmp / MARKER).read_bytes())

    # ------------------------------------------------------------------ maintenance
    def delete(self, h: str) -> bool:
        """Remove artifact ``h`` (complete or not); True if something was removed."""
        final = self._path(h)
        if self.is_local:
            self._stamp_path(h).unlink(missing_ok=True)
        if not self.fs.exists(final):
            return False
        if self.is_local:
            trash = Path(self.root) / _TRASH
            trash.mkdir(exist_ok=True)
            aside = trash / f"{h}.{uuid.uuid4().hex}"
            try:
                os.rename(final, aside)
            except FileNotFoundError:
                return False
            shutil.rmtree(aside, ignore_errors=True)
        else:
            # remove the manifest first so the artifact stops counting as complete at once
            if self.fs.exists(f"{final}/{MARKER}"):
                self.fs.rm(f"{final}/{MARKER}")
            self.fs.rm(final, recursive=True)
        return True

    def clean_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary and trashed folders left by crashed writers older than ``older_than_s``."""
        if not self.is_local:
            return 0
        removed = 0
        now = time.time()
        for sub in (_TMP, _TRASH):
            base = Path(self.root) / sub
            if not base.is_dir():
                continue
            for p in base.iterdir():
                try:
                    if now - p.stat().st_mtime >= older_than_s:
                        shutil.rmtree(p, ignore_errors=True)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed
