"""Exact streaming statistics of activations: reduce over the sequence, fold samples into moments.

Activations are reduced first over the sequence (seq_agg) to one vector per sample, then over samples
(batch_agg), each `mean` (of abs), `l2` (norm) or `var` (population variance). The per-sample vectors
are folded into exact streaming moments (count, sum |v|, sum v^2, mean, M2 by Chan's parallel update) in
float64, so memory does not grow with the number of samples, any batch_agg can be read off the same
pass, and moments of two disjoint halves merge into exactly the moments of one pass over both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ablate.errors import PruneError

AGGREGATIONS = ("mean", "l2", "var")


def seq_reduce(x: Tensor, how: str) -> Tensor:
    """[B, S, ...] -> [B, ...] over the sequence axis, in float32 or better."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if how == "mean":
        return torch.linalg.vector_norm(x, ord=1, dim=1) / x.shape[1]
    if how == "l2":
        return torch.linalg.vector_norm(x, ord=2, dim=1)
    if how == "var":
        return x.var(dim=1, unbiased=False)
    raise PruneError(f"unknown seq_agg '{how}' (expected one of {', '.join(AGGREGATIONS)})")


class Moments:
    """Exact streaming moments of per-sample vectors v [..shape]: n, sum|v|, sum v^2, mean, M2 (float64)."""

    KEYS = ("n", "abs_sum", "sq_sum", "mean", "m2")

    def __init__(self, shape: Sequence[int], device: torch.device | str = "cpu"):
        opts = {"dtype": torch.float64, "device": device}
        self.n = torch.zeros((), **opts)
        self.abs_sum = torch.zeros(tuple(shape), **opts)
        self.sq_sum = torch.zeros(tuple(shape), **opts)
        self.mean = torch.zeros(tuple(shape), **opts)
        self.m2 = torch.zeros(tuple(shape), **opts)

    def update(self, v: Tensor) -> None:
        """Fold in a batch of per-sample vectors, v [B, ..shape]."""
        v = v.to(torch.float64)
        nb = v.shape[0]
        mean_b = v.mean(0)
        m2_b = (v - mean_b).square().sum(0)
        self._combine(torch.tensor(float(nb), dtype=torch.float64, device=v.device), mean_b, m2_b)
        self.abs_sum += v.abs().sum(0)
        self.sq_sum += v.square().sum(0)

    def _combine(self, nb: Tensor, mean_b: Tensor, m2_b: Tensor) -> None:
        n = self.n + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2_b + delta.square() * (self.n * nb / n)
        self.n = n

    def merge(self, other: Moments) -> Moments:
        out = Moments(self.mean.shape, self.mean.device)
        for key in self.KEYS:
            setattr(out, key, getattr(self, key).clone())
        if float(other.n) == 0:
            return out
        if float(out.n) == 0:
            return other.merge(out)
        out._combine(other.n.to(out.n.device), other.mean.to(out.n.device), other.m2.to(out.n.device))
        out.abs_sum += other.abs_sum.to(out.n.device)
        out.sq_sum += other.sq_sum.to(out.n.device)
        return out

    def finalize(self, batch_agg: str) -> Tensor:
        if float(self.n) == 0:
            raise PruneError("no calibration samples were seen; importance needs at least one batch")
        if batch_agg == "mean":
            out = self.abs_sum / self.n
        elif batch_agg == "l2":
            out = self.sq_sum.sqrt()
        elif batch_agg == "var":
            out = self.m2 / self.n
        else:
            raise PruneError(f"unknown batch_agg '{batch_agg}' (expected one of {', '.join(AGGREGATIONS)})")
        return out.float().cpu()

    def state(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}.{k}": getattr(self, k).detach().cpu() for k in self.KEYS}

    @classmethod
    def from_state(cls, state: dict[str, Tensor], prefix: str) -> Moments:
        out = cls(state[f"{prefix}.mean"].shape)
        for key in cls.KEYS:
            setattr(out, key, state[f"{prefix}.{key}"].to(torch.float64).clone())
        return out


class RowMoments:
    """Moments [rows, C] updated one row (layer) at a time; the sample count is shared by all rows."""

    def __init__(self, rows: int, width: int, device):
        self.moments = Moments((rows, width), device)
        self.rows = rows
        self._pending: dict[int, Tensor] = {}

    def update_row(self, row: int, v: Tensor) -> None:
        # A model split over devices (accelerate's device_map) reports each layer from its own device.
        self._pending[row] = v.to(self.moments.mean.device)
        if len(self._pending) == self.rows:
            stacked = torch.stack([self._pending[r] for r in range(self.rows)], dim=1)  # [B, rows, C]
            self._pending.clear()
            self.moments.update(stacked)

    def check_flushed(self) -> None:
        if self._pending:
            raise PruneError(f"importance hooks saw {len(self._pending)} of {self.rows} rows in a batch")
