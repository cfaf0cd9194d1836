"""The order the trainer reads the training split in: a seeded permutation per epoch.

Addressed by position rather than iterated, so a resumed run (on any number of workers) reads exactly
the sequences an uninterrupted run would have read from that step on.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from ablate.errors import TrainError


class DataOrder:
    """Sequence indices for any position of the run: a seeded permutation of the split per epoch."""

    def __init__(self, seed: int, n: int):
        if n <= 0:
            raise TrainError("the training split is empty; give train() at least one sequence")
        self.seed, self.n = seed, n
        self._cache: tuple[int, Tensor] | None = None

    def permutation(self, epoch: int) -> Tensor:
        if self._cache is None or self._cache[0] != epoch:
            digest = hashlib.sha256(f"ablate-data-order:{self.seed}:{epoch}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            self._cache = (epoch, torch.randperm(self.n, generator=gen))
        return self._cache[1]

    def indices(self, start: int, count: int) -> Tensor:
        """Indices of sequences start .. start+count-1 of the run (crossing epochs as needed)."""
        parts, pos = [], start
        while pos < start + count:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, start + count - pos)
            parts.append(self.permutation(epoch)[offset : offset + take])
            pos += take
        return torch.cat(parts)
