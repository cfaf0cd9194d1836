"""Read a torch.distributed.checkpoint folder without unpickling arbitrary objects.

DCP's FileSystemReader loads the folder's `.metadata` with plain `pickle.load`, and its default planner
loads every non-tensor entry (optimizer hyper-parameters) with `torch.load(weights_only=False)`: a
checkpoint folder anyone could write to (a shared artifact store's `.work/`) would run their code on
resume. Checksums written beside the shards would not help (whoever rewrites a shard rewrites the
checksum file too) and would cost a full read of weights and optimizer state at every save, so the
loading itself is made safe instead:

- `.metadata` goes through an unpickler that only builds the classes a DCP metadata holds (its
  dataclasses, torch dtypes, torch.Size, layouts, paths); anything else stops the resume, named;
- non-tensor entries are loaded with `torch.load(weights_only=True)` (tensors already are, by DCP).
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import IO, Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from ablate.errors import TrainError

_METADATA_CLASSES = (
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorProperties",
    "TensorStorageMetadata",
    "_MEM_FORMAT_ENCODING",
)
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {("torch.distributed.checkpoint.metadata", n) for n in _METADATA_CLASSES}
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # a lookup of torch.strided & co. by name
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "Path"),
        ("collections", "OrderedDict"),
    }
)

__all__ = ["ALLOWED", "SafeFileSystemReader", "SafeLoadPlanner", "load_metadata"]


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], where: str) -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise TrainError(
            f"checkpoint metadata {self.where} asks to build {module}.{name}, which a torch.distributed "
            f"checkpoint never holds: it was not written by ablate, so it is not loaded. Delete "
            f"{self.where.rsplit('/', 1)[0]} to restart the run from scratch"
        )


def load_metadata(file: IO[bytes], where: str) -> Metadata:
    """A DCP `.metadata` read through the allow-list above."""
    try:
        metadata = _MetadataUnpickler(file, where).load()
    except TrainError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or not a pickle: say which file
        raise TrainError(
            f"checkpoint metadata {where} cannot be read ({type(exc).__name__}: {exc}); delete "
            f"{where.rsplit('/', 1)[0]} to restart the run"
        ) from exc
    if not isinstance(metadata, Metadata):
        raise TrainError(f"checkpoint metadata {where} holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose metadata goes through `load_metadata` (the rest is DCP's own)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = load_metadata(f, str(path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that loads non-tensor entries with weights_only=True: the object is rebuilt
    from the checkpoint's bytes safely, then handed on re-serialised, so DCP's own bookkeeping runs
    unchanged on bytes ablate itself produced."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise TrainError(
                f"checkpoint entry {read_item.dest_index.fqn} holds objects a training checkpoint never "
                f"holds; it is not loaded ({str(exc).splitlines()[0][:200]})"
            ) from exc
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)
