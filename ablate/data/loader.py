"""Reading shards back: memory-mapped sequences, per-source splits, and the weighted blend of train samples.

Each source's token stream is packed into sequences of seq_len (tail dropped) and split exactly as
corpus.token_splits splits one corpus (split_indices: eval from the front of one fixed permutation,
calibration from its back), so a single source gives today's splits to the token. With several sources,
eval and calibration sequences are shared out in proportion to the weights (largest remainder: the
counts add up to what was asked, each source's eval split stays a prefix of its own permutation, and
a source's eval set depends only on its own share) and concatenated in source order.

Train is a blend in the manner of Megatron's BlendedDataset: position i of the global order takes the
next sample of the source furthest below its weight (Webster / Sainte-Lague order, computed at once by
sorting the keys (m + 1/2) / w_j), so every prefix holds each source within one sample of its share,
without randomness; a source whose train sequences run out starts again from its first (an epoch).
The random order of training is the trainer's seeded DataOrder on top, addressed by position, so a
resumed run or any number of ranks reads exactly the samples of an uninterrupted single process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablate.data.corpus import Splits
from ablate.data.shards import read_index
from ablate.errors import DataError


class SourceTokens:
    """One source's finished shards, memory-mapped, read as rows of seq_len tokens."""

    def __init__(self, folder: Path, seq_len: int, tokenizer_fp: str | None = None):
        index = read_index(folder)
        if index is None or not index.get("complete"):
            raise DataError(f"{folder} holds no finished shards; run `ablate data prepare SPEC` again")
        if tokenizer_fp is not None and index["tokenizer_fingerprint"] != tokenizer_fp:
            raise DataError(
                f"the shards in {folder} (source '{index['source']}') were made with tokenizer "
                f"{index['tokenizer_fingerprint']}, but the teacher's tokenizer is {tokenizer_fp}; tokenize the "
                "source with the teacher's tokenizer (`ablate data prepare SPEC`)"
            )
        self.folder, self.index, self.seq_len = folder, index, seq_len
        dtype = np.dtype(index["dtype"])
        self.maps = [
            np.memmap(folder / s["file"], dtype=dtype, mode="r", shape=(s["tokens"],))
            for s in index["shards"]
        ]
        self.total_tokens = int(index["total_tokens"])
        self.sequences = self.total_tokens // seq_len
        self.starts = np.cumsum([0] + [s["tokens"] for s in index["shards"]])
        per_shard = index["shard_tokens"]
        self.rows_per_shard = per_shard // seq_len if per_shard % seq_len == 0 else 0  # 0: rows may straddle

    @property
    def source(self) -> str:
        return self.index["source"]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Sequences `idx` as an int64 array [len(idx), seq_len]."""
        out = np.empty((len(idx), self.seq_len), dtype=np.int64)
        if len(idx) == 0:
            return out
        if idx.min() < 0 or idx.max() >= self.sequences:
            raise IndexError(f"sequence index out of range 0..{self.sequences - 1}")
        if self.rows_per_shard:
            shard, row = np.divmod(idx, self.rows_per_shard)
            for s in np.unique(shard):
                take = shard == s
                rows = self.maps[s][: len(self.maps[s]) // self.seq_len * self.seq_len].reshape(
                    -1, self.seq_len
                )
                out[take] = rows[row[take]]
            return out
        for k, i in enumerate(idx):  # rows straddling shards: gather token ranges
            out[k] = self.tokens(int(i) * self.seq_len, self.seq_len)
        return out

    def tokens(self, start: int, count: int) -> np.ndarray:
        parts, pos = [], start
        while pos < start + count:
            s = int(np.searchsorted(self.starts, pos, side="right")) - 1
            end = min(start + count, int(self.starts[s + 1]))
            parts.append(self.maps[s][pos - self.starts[s] : end - self.starts[s]])
            pos = end
        return np.concatenate(parts)


class SequenceView:
    """A [n, seq_len] LongTensor that is read on access: `len`, `shape`, int / slice / index-tensor
    indexing as a tensor would give, without holding the split in memory."""

    ndim = 2
    dtype = torch.long

    def __init__(
        self, sources: Sequence[SourceTokens], source_ids: np.ndarray, rows: np.ndarray, seq_len: int
    ):
        self.sources, self.source_ids, self.row_ids, self.seq_len = list(sources), source_ids, rows, seq_len

    def __len__(self) -> int:
        return len(self.row_ids)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.seq_len))

    def dim(self) -> int:
        return 2

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def _gather(self, positions: np.ndarray) -> torch.Tensor:
        out = np.empty((len(positions), self.seq_len), dtype=np.int64)
        ids, rows = self.source_ids[positions], self.row_ids[positions]
        for j in np.unique(ids):
            take = ids == j
            out[take] = self.sources[j].rows(rows[take])
        return torch.from_numpy(out)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for {len(self)} sequences")
            return self._gather(np.array([i % len(self)]))[0]
        if isinstance(key, slice):
            r = range(len(self))[key]  # no array of every position for one slice
            return self._gather(np.arange(r.start, r.stop, r.step, dtype=np.int64))
        positions = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        return self._gather(np.where(positions < 0, positions + len(self), positions).astype(np.int64))

    def __iter__(self):
        for start in range(0, len(self), 1024):
            yield from self[start : start + 1024]

    def tensor(self) -> torch.Tensor:
        """The whole split in memory (for callers that need a real tensor)."""
        return self[:]


def shares(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights`, by largest remainder (ties to the earlier source)."""
    norm = sum(weights)
    exact = [total * w / norm for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in order[: total - sum(counts)]:
        counts[j] += 1
    return counts


def blend_order(weights: Sequence[float], samples: int) -> np.ndarray:
    """The source of each of `samples` positions: source j's m-th sample sits at key (m + 1/2) / w_j,
    positions in key order (ties to the earlier source), so each prefix is within one sample of its share."""
    norm = sum(weights)
    keys, ids = [], []
    for j, w in enumerate(weights):
        m = np.arange(math.ceil(samples * w / norm) + 1, dtype=np.float64)
        keys.append((m + 0.5) / (w / norm))
        ids.append(np.full(len(m), j, dtype=np.int16))
    key, src = np.concatenate(keys), np.concatenate(ids)
    order = np.lexsort((src, key))[:samples]
    return src[order]


@dataclass(frozen=True)
class ShardedSplits:
    """corpus.Splits read from shards: train is a SequenceView of the blend; eval and calibration are
    small LongTensors [n, seq_len]; `sources` holds each source's exact token accounting."""

    train: SequenceView
    eval: torch.Tensor
    calibration: torch.Tensor
    seq_len: int
    total_tokens: int
    sources: list[dict[str, Any]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return {**Splits.info(self), "sources": self.sources}  # type: ignore[arg-type]


def build_splits(
    sources: Sequence[SourceTokens],
    weights: Sequence[float],
    seq_len: int,
    eval_tokens: int,
    calibration_samples: int,
    train_samples: int | None = None,
    min_train_sequences: int = 1,
) -> ShardedSplits:
    """Per-source splits as corpus.split_indices cuts them, and the blended train order."""
    from ablate.data.corpus import split_indices

    n_eval = math.ceil(eval_tokens / seq_len)
    eval_counts, cal_counts = shares(n_eval, weights), shares(calibration_samples, weights)
    evals, cals, trains = [], [], []
    for j, src in enumerate(sources):
        needed = eval_counts[j] + cal_counts[j] + min_train_sequences
        if needed > src.sequences:
            raise DataError(
                f"source '{src.source}' has {src.total_tokens} tokens = {src.sequences} sequences of {seq_len}, "
                f"but {eval_counts[j]} eval + {cal_counts[j]} calibration + {min_train_sequences} train sequences "
                "were asked of it; use a larger source, a smaller weight, or fewer eval tokens / calibration samples"
            )
        e, c, t = (x.numpy() for x in split_indices(src.sequences, eval_counts[j], cal_counts[j]))
        evals.append(torch.from_numpy(src.rows(e)))
        cals.append(torch.from_numpy(src.rows(c)))
        trains.append(t)
    norm = sum(weights)
    if train_samples is None:  # the longest blend in which no source repeats
        train_samples = max(
            1, min(math.floor(len(t) * norm / w) for t, w in zip(trains, weights, strict=True))
        )
        train_samples = min(train_samples, sum(len(t) for t in trains))
    source_ids = blend_order(weights, train_samples)
    rows = np.empty(train_samples, dtype=np.int64)
    accounting = []
    for j, (src, t) in enumerate(zip(sources, trains, strict=True)):
        at = np.flatnonzero(source_ids == j)
        rows[at] = t[np.arange(len(at)) % len(t)]
        accounting.append({
            "source": src.source, "weight": weights[j] / norm, "tokens": src.total_tokens,
            "documents": src.index["documents"], "sequences": src.sequences,
            "dropped_tokens": src.total_tokens - src.sequences * seq_len, "eval_sequences": eval_counts[j],
            "calibration_sequences": cal_counts[j], "train_sequences": len(t), "train_samples": len(at),
            "share": len(at) / train_samples, "epochs": len(at) / len(t), "shards": str(src.folder),
        })  # fmt: skip
    return ShardedSplits(
        train=SequenceView(sources, source_ids, rows, seq_len),
        eval=torch.cat(evals),
        calibration=torch.cat(cals),
        seq_len=seq_len,
        total_tokens=sum(s.total_tokens for s in sources),
        sources=accounting,
    )
