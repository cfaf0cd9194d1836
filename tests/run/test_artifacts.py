"""ArtifactStore: atomic publication, crash safety, concurrent writers, local and fsspec stores."""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid
from pathlib import Path

import pytest

from ablate.run.artifacts import MARKER, ArtifactMissing, ArtifactStore

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
    assert store.manifest(H)["files"] == [{"path": "good.bin", "size": 2}]
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
    assert sorted(os.listdir(root)) in ([".tmp", H], [".tmp", ".trash", H])
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
