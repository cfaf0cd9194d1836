"""The tokenize stage: one source's documents -> fixed-size shards of token ids on disk, resumable.

The layout follows what Megatron (`.bin` + index) and litdata (fixed-size chunks + `index.json`) users
know: `NNNNN.bin` files of raw token ids (uint16 when the vocabulary fits, else uint32), each holding
`shard_tokens` tokens (a multiple of seq_len, so a sequence never straddles two shards; the last shard
is shorter) and an `index.json`. The token stream is exactly corpus.token_stream's: every document's
ids followed by EOS. A shard is written under a temporary name and renamed when full; the index, which
lists only renamed shards, is swapped in atomically after each one, so a killed run resumes after its
last finished shard and a reader never sees a half-written file. The folder is addressed by
sha256(source fingerprint, tokenizer fingerprint, seq_len).
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ablate.data.sources import Source, documents, fingerprint
from ablate.errors import DataError

FORMAT = "ablate-shards-v1"
INDEX = "index.json"
SHARD_TOKENS = 1 << 25  # 32M tokens: 64 MB of uint16, litdata's default chunk size order
BATCH_CHARS = 1 << 20  # text tokenized per call: large enough to amortise the call, small for flat memory


@dataclass(frozen=True)
class TokenizeProgress:
    """Reported after each tokenized batch (and once at the end, done=True)."""

    source: str
    tokens: int
    documents: int
    shards: int
    seconds: float
    done: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[TokenizeProgress], None]


def token_dtype(tokenizer: Any) -> np.dtype:
    size = max(len(tokenizer), getattr(tokenizer, "vocab_size", 0) or 0)
    return np.dtype(np.uint16 if size <= 1 << 16 else np.uint32)


def shard_key(source_fingerprint: str, tokenizer_fp: str, seq_len: int) -> str:
    return hashlib.sha256(f"{FORMAT}|{source_fingerprint}|{tokenizer_fp}|{seq_len}".encode()).hexdigest()[:24]


def read_index(folder: Path) -> dict[str, Any] | None:
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("format") == FORMAT else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ encoding

_WORKER: dict[str, Any] = {}


def _backend(tokenizer_json: str):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    backend.no_truncation()
    backend.no_padding()
    return backend


def _init_worker(tokenizer_json: str) -> None:
    os.environ["RAYON_NUM_THREADS"] = "1"  # one thread per process: N processes use N cores, not N x cores
    _WORKER["backend"] = _backend(tokenizer_json)


def encode(backend: Any, docs: list[str], eos: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(token ids with EOS after each document, tokens per document incl. EOS).

    `encode_batch_fast` (tokenizers >= 0.21) gives the same ids as `encode_batch` without computing
    character offsets, which we never read: about a quarter less CPU on SmolLM2's tokenizer."""
    batch_encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    id_lists = [e.ids for e in batch_encode(docs, add_special_tokens=False)]
    lengths = np.fromiter((len(ids) + 1 for ids in id_lists), dtype=np.int64, count=len(id_lists))
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    flat[ends - 1] = eos
    pos = 0
    for ids, end in zip(id_lists, ends, strict=True):
        flat[pos : end - 1] = ids
        pos = int(end)
    return flat, lengths


def _encode_in_worker(docs: list[str], eos: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return encode(_WORKER["backend"], docs, eos, np.dtype(dtype))


def _doc_batches(docs: Iterator[str], skip: int) -> Iterator[list[str]]:
    for _ in range(skip):
        if next(docs, None) is None:
            raise DataError(
                "the source has fewer documents than its unfinished shards recorded; delete the shards"
            )
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encoded(
    batches: Iterator[list[str]], tokenizer: Any, eos: int, dtype: np.dtype, workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encoded batches in order; with workers > 1, at most 2 batches per worker are in flight (flat memory)."""
    if workers <= 1:  # a thread encodes (the tokenizer releases the GIL) while this one reads and writes
        from concurrent.futures import ThreadPoolExecutor

        backend = tokenizer.backend_tokenizer
        if backend.truncation is not None or backend.padding is not None:  # a copy without them
            backend = _backend(backend.to_str())
        with ThreadPoolExecutor(1) as thread:
            ahead: collections.deque = collections.deque()
            for docs in batches:
                ahead.append(thread.submit(encode, backend, docs, eos, dtype))
                if len(ahead) >= 2:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        return
    import multiprocessing

    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer_json,)) as pool:
        pending: collections.deque = collections.deque()
        for docs in batches:
            pending.append(pool.apply_async(_encode_in_worker, (docs, eos, dtype.str)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ------------------------------------------------------------------------------------------- writing


class _ShardWriter:
    """Appends tokens to the current shard's temp file; a full shard is renamed and the index swapped."""

    def __init__(self, folder: Path, index: dict[str, Any], progress: Callable[[], None]):
        self.folder, self.index, self.progress = folder, index, progress
        self.size = index["shard_tokens"]
        self.handle = None
        self.filled = 0

    def _open(self) -> None:
        name = f"{len(self.index['shards']):05d}.bin"
        self.handle = open(self.folder / f".{name}.tmp", "wb")
        self.filled = 0

    def write(
        self, tokens: np.ndarray, docs_before: int, doc_ends: np.ndarray, batch_start: int, start: int
    ) -> None:
        """Append `tokens` (stream positions start..) of a batch whose documents begin at batch_start and
        end at the stream positions doc_ends; `docs_before` documents came before the batch."""
        pos = 0
        while pos < len(tokens):
            if self.handle is None:
                self._open()
            take = min(self.size - self.filled, len(tokens) - pos)
            self.handle.write(tokens[pos : pos + take].tobytes())
            self.filled += take
            pos += take
            if self.filled == self.size:
                end = start + pos
                done = int(np.searchsorted(doc_ends, end, side="right"))
                self.close(docs_before + done, end - (int(doc_ends[done - 1]) if done else batch_start))

    def close(self, docs_done: int, carry: int) -> None:
        if self.handle is None:
            return
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        self.handle = None
        name = f"{len(self.index['shards']):05d}.bin"
        os.replace(self.folder / f".{name}.tmp", self.folder / name)
        self.index["shards"].append(
            {"file": name, "tokens": self.filled, "docs_done": docs_done, "carry": carry}
        )
        _write_json(self.folder / INDEX, self.index)
        self.progress()


def tokenize_source(
    source: Source,
    tokenizer: Any,
    seq_len: int,
    root: Path,
    *,
    shard_tokens: int = SHARD_TOKENS,
    workers: int = 1,
    progress: ProgressFn | None = None,
) -> Path:
    """The folder of the source's shards, tokenizing (or finishing a killed run) when it is not complete."""
    from ablate.data.corpus import tokenizer_fingerprint

    tok_fp = tokenizer_fingerprint(tokenizer)
    source_fp = fingerprint(source)
    folder = Path(root) / shard_key(source_fp, tok_fp, seq_len)
    index = read_index(folder)
    if index is not None and index.get("complete"):
        return folder
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; it is needed to separate packed documents")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `prepare` of the same source waits, then finds it done
        index = read_index(folder)
        if index is not None and index.get("complete"):
            return folder
        if index is None or index.get("tokenizer_fingerprint") != tok_fp:
            index = {
                "format": FORMAT, "source": source.path, "text_field": source.text_field,
                "source_fingerprint": source_fp, "tokenizer_fingerprint": tok_fp, "seq_len": seq_len,
                "dtype": token_dtype(tokenizer).name, "eos": eos,
                "shard_tokens": max(seq_len, shard_tokens // seq_len * seq_len), "shards": [], "complete": False,
            }  # fmt: skip
        for stray in folder.glob(".*.tmp"):
            stray.unlink()
        try:
            _run(source, tokenizer, folder, index, workers, progress)
        except DataError:
            shutil.rmtree(folder, ignore_errors=True)  # bad input: nothing half-made is left to find
            raise
    return folder


def _run(
    source: Source,
    tokenizer: Any,
    folder: Path,
    index: dict[str, Any],
    workers: int,
    progress: ProgressFn | None,
) -> None:
    dtype, eos = np.dtype(index["dtype"]), index["eos"]
    shards = index["shards"]
    docs_done = shards[-1]["docs_done"] if shards else 0
    resumed_at = sum(s["tokens"] for s in shards)
    stream_pos = resumed_at - (
        shards[-1]["carry"] if shards else 0
    )  # stream position of doc docs_done's start
    started = time.perf_counter()
    counts = {"tokens": 0, "docs": docs_done}

    def report(done: bool = False) -> None:
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(
                TokenizeProgress(source.path, counts["tokens"], counts["docs"], len(shards), elapsed, done)
            )

    writer = _ShardWriter(folder, index, report)
    batches = _doc_batches(documents(source), docs_done)
    for flat, lengths in _encoded(batches, tokenizer, eos, dtype, workers):
        ends = stream_pos + np.cumsum(lengths)
        drop = max(0, resumed_at - stream_pos)  # tokens of a resumed document already in a finished shard
        writer.write(flat[drop:], counts["docs"], ends, stream_pos, stream_pos + drop)
        stream_pos = int(ends[-1])
        counts["docs"] += len(lengths)
        counts["tokens"] += len(flat) - drop
        report()
    writer.close(counts["docs"], 0)
    total = sum(s["tokens"] for s in shards)
    if total == 0:
        raise DataError(f"source '{source.path}' contains no text")
    index.update(complete=True, total_tokens=total, documents=counts["docs"])
    _write_json(folder / INDEX, index)
    report(done=True)
