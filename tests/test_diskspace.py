"""A failed write says where, how much space is left there, and (when it is so) that the disk is full."""

from __future__ import annotations

import errno
import io

import pytest
import torch

from ablate.diskspace import explain, translating_write_errors
from ablate.errors import TrainError, WriteError


class FillsUp(io.RawIOBase):
    """A file on a filesystem that fills up: the first `room` writes land, then ENOSPC."""

    def __init__(self, inner=None, room: int = 3):
        self.inner, self.room = inner, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return self.inner.write(b) if self.inner is not None else len(b)


def _torch_full_disk() -> RuntimeError:
    try:
        torch.save({"w": torch.zeros(1000)}, FillsUp())
    except RuntimeError as exc:
        return exc
    raise AssertionError("torch.save did not fail")


def test_torch_unexpected_pos_on_a_full_disk_says_so(tmp_path):
    exc = _torch_full_disk()
    assert "unexpected pos" in str(exc)  # all torch itself says
    error = explain(exc, tmp_path / "x", "artifact prune-1")
    assert isinstance(error, WriteError)
    text = str(error)
    assert text.startswith(f"no space left on device while writing artifact prune-1 to {tmp_path / 'x'} (")
    assert "bytes free of" in text and "unexpected pos" in text


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        Exception('Error while serializing: I/O error: No space left on device (os error 28) at path "/x"'),
    ],
)
def test_every_spelling_of_a_full_disk_is_recognised(tmp_path, exc):
    assert str(explain(exc, tmp_path, "checkpoint")).startswith(
        "no space left on device while writing checkpoint"
    )


def test_a_write_failure_with_room_to_spare_does_not_claim_a_full_disk(tmp_path):
    error = explain(
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), tmp_path, "x"
    )
    assert str(error).startswith(f"writing x to {tmp_path} failed (") and "no space left" not in str(error)


@pytest.mark.parametrize(
    "exc", [ValueError("bad"), RuntimeError("CUDA out of memory"), TrainError("diverged")]
)
def test_other_errors_are_left_alone(tmp_path, exc):
    assert explain(exc, tmp_path, "x") is None
    with pytest.raises(type(exc)):
        with translating_write_errors(tmp_path, "x"):
            raise exc


def test_a_training_checkpoint_on_a_full_disk_names_its_path(tmp_path):
    from ablate.distill.checkpoint import atomic_write_bytes

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(
        WriteError, match=rf"no space left on device while writing checkpoint checkpoint.pt to {path} \("
    ):
        atomic_write_bytes(path, lambda f: torch.save({"w": torch.zeros(1000)}, FillsUp(f)))
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_a_failed_trial_reports_the_write_error_not_what_it_wraps(tmp_path):
    from ablate.run.ray_workers import error_line

    with pytest.raises(WriteError) as caught:
        with translating_write_errors(tmp_path, "artifact eval-1"):
            raise _torch_full_disk()
    line = error_line(caught.value)  # what a trial's failure and `ablate status` show
    assert line.startswith("WriteError: no space left on device while writing artifact eval-1")
