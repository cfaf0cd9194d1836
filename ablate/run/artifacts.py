"""Content-addressed artifact store keyed by stage hash.

Layout under the store root (a local directory or any fsspec URL)::

    <root>/<hash>/...            one folder per stage artifact
    <root>/<hash>/_ABLATE_COMPLETE   JSON manifest, written last: the folder counts as complete only with it
    <root>/.tmp/<hash>.<nonce>/  in-flight writes (local stores), renamed into place on success
    <root>/.trash/               folders moved aside before deletion or replacement

Local stores publish with one ``os.rename`` of a finished folder (manifest inside), so an artifact appears
complete or not at all, and a crash leaves only a temporary folder that :meth:`ArtifactStore.exists` ignores.
Remote stores (``s3://``, ``gs://``, ...) have no atomic folder rename: the files are uploaded first and the
manifest last, and a folder without its manifest is treated as absent and cleared by the next writer.
Concurrent writers of one hash both succeed; the first to publish wins and the others' output is discarded
(same hash, same inputs, so the same content up to non-determinism).
"""

from __future__ import annotations

import errno
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

from ablate.errors import RunError

MARKER = "_ABLATE_COMPLETE"
_TMP = ".tmp"
_TRASH = ".trash"
_HASH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

__all__ = ["MARKER", "ArtifactMissing", "ArtifactStore"]


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
    files = []
    total = 0
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MARKER:
            size = p.stat().st_size
            files.append({"path": p.relative_to(folder).as_posix(), "size": size})
            total += size
    return {
        "hash": h,
        "created": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "bytes": total,
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
            return json.loads(f.read().decode())

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

    # ------------------------------------------------------------------ reading
    def local_path(self, h: str) -> Path:
        """A local folder holding the complete artifact ``h``; remote artifacts are downloaded to the cache."""
        self._require(h)
        if self.is_local:
            return Path(self._path(h))
        cache_root = Path(
            self._cache_dir or os.environ.get("ABLATE_ARTIFACT_CACHE") or "~/.cache/ablate/artifacts"
        ).expanduser()
        target = cache_root / h
        if (target / MARKER).exists():
            return target
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{h}.", dir=cache_root))
        try:
            remote = self._path(h)
            for rel in self._remote_files(remote):
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{remote}/{rel}", str(dest))
            self._publish_local(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def open(self, h: str, name: str, mode: str = "rb") -> IO[Any]:
        """Open file ``name`` (relative path) inside the complete artifact ``h`` for reading."""
        if any(c in mode for c in "wax+"):
            raise ValueError("artifacts are read-only once published; use write() to produce one")
        self._require(h)
        return self.fs.open(f"{self._path(h)}/{name.lstrip('/')}", mode)

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
            yield tmp
            (tmp / MARKER).write_text(json.dumps(_manifest(tmp, h), indent=1))
            if self.is_local:
                self._publish_local(tmp, Path(self._path(h)), overwrite=overwrite)
            else:
                self._publish_remote(tmp, h, overwrite=overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish_local(self, tmp: Path, final: Path, *, overwrite: bool = False) -> None:
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        trash = final.parent / _TRASH
        for _ in range(10):
            if final.exists():
                if (final / MARKER).exists() and not overwrite:
                    return  # another writer published first
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
            return
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
