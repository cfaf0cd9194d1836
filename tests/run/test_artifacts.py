"""ArtifactStore: atomic publication, crash safety, concurrent writers, local and fsspec stores."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import uuid
from pathlib import Path

import pytest

from ablate.run.artifacts import MARKER, ArtifactCorrupt, ArtifactMissing, ArtifactStore

H = "a1b2c3d4e5f6"


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(tmp_path / "artifacts", cache_dir=tmp_path / "cache")
    return ArtifactStore(f"memory://ablate-test-{uuid.uuid4().hex}", cache_dir=tmp_path / "cache")


def test_write_publishes_and_reads_back(store):
    assert not store.exists(H)
    with store.write(H) as d:
        assert isinstance(d, Path) and d.is_dir() and not any(d.iterdir())
        (d / "model").mkdir()
        (d / "model" / "weights.bin").write_bytes(b"\x00" * 10)
        (d / "config.json").write_text('{"a": 1}')
        assert not store.exists(H)  # not visible before the block ends
    assert store.exists(H)
    assert store.list() == [H]
    assert store.manifest(H)["bytes"] == 18
    with store.open(H, "config.json", "r") as f:
        assert f.read() == '{"a": 1}'
    local = store.local_path(H)
    assert (local / "model" / "weights.bin").read_bytes() == b"\x00" * 10
    assert (local / MARKER).exists()
    assert store.path_for(H).endswith(H)
    if store.is_local:
        assert store.path_for(H) == str(local)
    else:
        assert store.path_for(H).startswith("memory://")


def test_crash_inside_write_leaves_nothing(store):
    with pytest.raises(RuntimeError, match="boom"):
        with store.write(H) as d:
            (d / "half.bin").write_bytes(b"x" * 100)
            raise RuntimeError("boom")
    assert not store.exists(H)
    assert store.list() == []
    with pytest.raises(ArtifactMissing, match="ablate submit"):
        store.local_path(H)
    with pytest.raises(ArtifactMissing):
        store.open(H, "half.bin")
    if store.is_local:
        assert not Path(store.path_for(H)).exists()
        assert not any((Path(store.root) / ".tmp").iterdir())


def test_incomplete_folder_is_not_an_artifact_and_is_replaced(store):
    # what a killed remote upload (or a hand-made folder) looks like: files but no manifest
    store.fs.makedirs(f"{store.root}/{H}", exist_ok=True)
    store.fs.pipe_file(f"{store.root}/{H}/half.bin", b"junk")
    assert not store.exists(H)
    with store.write(H) as d:
        (d / "good.bin").write_bytes(b"ok")
    assert store.exists(H)
    assert store.manifest(H)["files"] == [
        {"path": "good.bin", "size": 2, "sha256": hashlib.sha256(b"ok").hexdigest()}
    ]
    assert not store.fs.exists(f"{store.root}/{H}/half.bin")


def test_second_writer_is_discarded_unless_overwrite(store):
    with store.write(H) as d:
        (d / "v").write_text("1")
    with store.write(H) as d:
        (d / "v").write_text("2")
    with store.open(H, "v", "r") as f:
        assert f.read() == "1"
    with store.write(H, overwrite=True) as d:
        (d / "v").write_text("3")
    with store.open(H, "v", "r") as f:
        assert f.read() == "3"
    assert store.delete(H) and not store.exists(H) and not store.delete(H)


def test_rejects_bad_hashes_and_writable_open(store):
    for bad in ["", "../x", "a/b", ".hidden", "x" * 200]:
        with pytest.raises(ValueError):
            store.path_for(bad)
    with store.write(H) as d:
        (d / "f").write_text("x")
    with pytest.raises(ValueError, match="read-only"):
        store.open(H, "f", "w")


def test_file_url_is_local(tmp_path):
    s = ArtifactStore(f"file://{tmp_path}/a")
    assert s.is_local and s.root == f"{tmp_path}/a"


def test_crash_by_sigkill_leaves_only_tmp(tmp_path):
    root = tmp_path / "artifacts"
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_write_then_die, args=(str(root), H))
    p.start()
    p.join(60)
    assert p.exitcode == -9
    store = ArtifactStore(root)
    assert not store.exists(H)
    assert not (root / H).exists()
    leftovers = list((root / ".tmp").iterdir())
    assert len(leftovers) == 1  # the killed writer's temp folder, never taken for an artifact
    os.utime(leftovers[0], (0, 0))
    assert store.clean_tmp(older_than_s=60) == 1


def test_concurrent_writers_same_hash(tmp_path):
    root = tmp_path / "artifacts"
    n = 4
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_race_writer, args=(str(root), H, i, barrier)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    store = ArtifactStore(root)
    assert store.exists(H)
    files = sorted(f["path"] for f in store.manifest(H)["files"])
    assert len(files) == 20
    writers = {(store.local_path(H) / f).read_text() for f in files}
    assert len(writers) == 1  # every file from one writer: no mixing
    assert sorted(n for n in os.listdir(root) if n != ".verified") in ([".tmp", H], [".tmp", ".trash", H])
    assert not any((root / ".tmp").iterdir())


def _write_then_die(root: str, h: str) -> None:
    store = ArtifactStore(root)
    with store.write(h) as d:
        (d / "half.bin").write_bytes(b"x" * 1000)
        os.kill(os.getpid(), 9)


def _race_writer(root: str, h: str, i: int, barrier) -> None:
    store = ArtifactStore(root)
    barrier.wait()
    with store.write(h) as d:
        for k in range(20):
            (d / f"shard-{k:02d}.txt").write_text(f"writer {i}")


# ------------------------------------------------------------------------------------------- integrity
def _published(store: ArtifactStore, files: dict[str, bytes]) -> None:
    with store.write(H) as d:
        for rel, data in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)


def _damage(store: ArtifactStore, how: str) -> None:
    """Change a published artifact behind the store's back, the way a disk, a script or a person might."""
    base = f"{store.root}/{H}"
    if how == "flip":  # same size, one byte different
        data = bytearray(store.fs.cat_file(f"{base}/model/weights.bin"))
        data[17] ^= 0x40
        store.fs.pipe_file(f"{base}/model/weights.bin", bytes(data))
    elif how == "truncate":
        store.fs.pipe_file(f"{base}/model/weights.bin", store.fs.cat_file(f"{base}/model/weights.bin")[:100])
    elif how == "delete":
        store.fs.rm(f"{base}/config.json")
    elif how == "add":
        store.fs.pipe_file(f"{base}/model/extra.bin", b"planted")


@pytest.mark.parametrize(
    "how, says",
    [
        ("flip", "model/weights.bin: content changed"),
        ("truncate", "model/weights.bin: 100 bytes, the manifest says 4096"),
        ("delete", "config.json: missing"),
        ("add", "model/extra.bin: not in the manifest"),
    ],
)
def test_a_changed_artifact_is_refused_naming_the_file_and_the_fix(store, how, says):
    _published(store, {"model/weights.bin": os.urandom(4096), "config.json": b'{"a": 1}'})
    store.verify(H)
    _damage(store, how)
    with pytest.raises(ArtifactCorrupt) as caught:
        if store.is_local or how != "flip":
            store.verify(H)  # a remote store checks names and sizes without downloading
        store.local_path(H)
    message = str(caught.value)
    assert says in message and f"artifact {H}" in message and f"--recompute {H}" in message
    assert caught.value.hash == H


def test_open_returns_only_verified_bytes(store):
    _published(store, {"result.json": b'{"loss": 1.5}'})
    with store.open(H, "result.json", "r") as f:
        assert f.read() == '{"loss": 1.5}'
    store.fs.pipe_file(f"{store.root}/{H}/result.json", b'{"loss": 0.1}')  # same size, better number
    with pytest.raises(ArtifactCorrupt, match="result.json: content changed"):
        store.open(H, "result.json")


def test_a_manifest_without_checksums_is_refused(store):
    _published(store, {"w.bin": b"x" * 10})
    path = f"{store.root}/{H}/{MARKER}"
    manifest = json.loads(store.fs.cat_file(path))
    manifest.pop("checksum")
    for f in manifest["files"]:
        f.pop("sha256")
    store.fs.pipe_file(path, json.dumps(manifest).encode())  # what an ablate before checksums wrote
    with pytest.raises(ArtifactCorrupt, match="no sha256 checksums .* cannot be verified"):
        store.verify(H)


def test_an_unchanged_artifact_is_hashed_once_then_stat_only(tmp_path, monkeypatch):
    from ablate.run import integrity

    store = ArtifactStore(tmp_path / "a")
    hashed: list[str] = []
    real = integrity.file_digest
    monkeypatch.setattr(integrity, "file_digest", lambda p: hashed.append(str(p)) or real(p))
    _published(store, {"w.bin": b"x" * 1000, "c.json": b"{}"})
    assert len(hashed) == 2  # the publisher hashes each file once
    for _ in range(3):
        store.local_path(H)
    assert len(hashed) == 2  # the publisher's stamp holds: no re-read
    weights = tmp_path / "a" / H / "w.bin"
    stat = weights.stat()
    with open(weights, "r+b") as f:  # in place, same size, and the mtime put back
        f.write(b"y")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ArtifactCorrupt, match="w.bin: content changed"):
        store.local_path(H)  # the ctime moved: hashed again, and caught


def test_a_full_disk_names_the_artifact_path_and_free_bytes(tmp_path):
    import errno

    import torch

    from ablate.errors import WriteError

    store = ArtifactStore(tmp_path / "a")

    class FullDisk(io.RawIOBase):  # a file on a filesystem that fills up after the first writes
        written = 0

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.written += 1
            if self.written > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(b)

    with pytest.raises(WriteError) as caught:
        with store.write(H):
            torch.save({"w": torch.zeros(1000)}, FullDisk())  # RuntimeError: ... unexpected pos ...
    message = str(caught.value)
    assert "no space left on device" in message and f"artifact {H}" in message
    assert str(tmp_path / "a" / ".tmp") in message and "bytes free of" in message
    assert "unexpected pos" in message  # what torch said, kept for the record
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert not store.exists(H) and not any((tmp_path / "a" / ".tmp").iterdir())


def test_other_errors_inside_a_write_pass_through_unchanged(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    with pytest.raises(KeyError, match="nope"):
        with store.write(H):
            raise KeyError("nope")


def test_a_garbled_manifest_is_refused_not_a_traceback(store):
    _published(store, {"result.json": b"{}"})
    store.fs.pipe_file(f"{store.root}/{H}/{MARKER}", b"\x00not json")
    for read in (store.verify, store.manifest, lambda h: store.open(h, "result.json")):
        with pytest.raises(ArtifactCorrupt, match=f"its manifest {MARKER} is not valid JSON"):
            read(H)
