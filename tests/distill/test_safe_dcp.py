"""Resuming from a sharded (torch.distributed.checkpoint) folder unpickles nothing but DCP's own metadata
classes and plain values: a planted `.metadata` or optimizer entry is refused, by name, unrun."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from ablate.distill.parallel import DCP_CHECKPOINT, Parallel, load_sharded, save_sharded
from ablate.errors import TrainError


def _trained(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    return model, optimizer


class Planted:
    """What a hostile pickle does: run a callable of its choice while being loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.fixture
def saved(tmp_path) -> tuple[Path, nn.Module]:
    model, optimizer = _trained(0)
    save_sharded(tmp_path, Parallel(), model, None, optimizer, {"step": 3})
    return tmp_path, model


def test_a_sharded_checkpoint_loads_back_exactly(saved):
    out, model = saved
    fresh, optimizer = _trained(1)
    load_sharded(out, fresh, None, optimizer)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)  # a non-tensor entry, loaded safely


def test_a_planted_metadata_pickle_is_refused_unrun(saved, tmp_path):
    out, _ = saved
    marker = tmp_path / "pwned"
    (out / DCP_CHECKPOINT / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    fresh, optimizer = _trained(1)
    with pytest.raises(
        TrainError, match=r"asks to build builtins\.exec, which a torch.distributed checkpoint"
    ):
        load_sharded(out, fresh, None, optimizer)
    assert not marker.exists()


def test_a_planted_optimizer_entry_is_refused_unrun(saved, tmp_path):
    out, _ = saved
    folder = out / DCP_CHECKPOINT
    marker = tmp_path / "pwned"
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # the real one, trusted here in the test
    bytes_entries = {
        index: info
        for index, info in metadata.storage_data.items()
        if index.fqn.endswith("param_groups.0.lr")
    }
    ((index, info),) = bytes_entries.items()
    shard = folder / info.relative_path
    data = bytearray(shard.read_bytes())
    payload = io.BytesIO()
    torch.save(Planted(marker), payload)
    planted = payload.getvalue()
    # the entry's bytes are replaced (the metadata is rewritten to point at them): a hostile writer's view
    info.offset, info.length = len(data), len(planted)
    shard.write_bytes(bytes(data) + planted)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    fresh, optimizer = _trained(1)
    with pytest.raises(
        TrainError, match=r"param_groups\.0\.lr holds objects a training checkpoint never holds"
    ):
        load_sharded(out, fresh, None, optimizer)
    assert not marker.exists()


def test_a_truncated_metadata_names_the_folder(saved):
    out, _ = saved
    path = out / DCP_CHECKPOINT / ".metadata"
    path.write_bytes(path.read_bytes()[:50])
    fresh, optimizer = _trained(1)
    with pytest.raises(
        TrainError, match=rf"checkpoint metadata {path} cannot be read .* delete {out / DCP_CHECKPOINT}"
    ):
        load_sharded(out, fresh, None, optimizer)
