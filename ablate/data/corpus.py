"""Corpora: read text, tokenise, pack into full sequences (never padded), split deterministically.

`builtin:pydoc` is the English text of the standard library's `pydoc_data.topics`; user corpora are
`.txt` files (one document) or `.jsonl` files with a `text` field per line. Documents are joined with
the tokenizer's EOS token, the token stream is cut into sequences of exactly `seq_len` tokens (the tail
that does not fill a sequence is dropped), and the sequences are dealt by one fixed permutation: eval
from its front, calibration from its back, train in between. So the eval split depends only on the
corpus, tokenizer, seq_len and eval size, the calibration split only on its own size (calibration of
one run never overlaps eval of another with a different eval size), and no two splits share a sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ablate.errors import DataError

log = logging.getLogger(__name__)

SPLIT_SEED = 1234
DOC_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Splits:
    """Packed token sequences, each LongTensor [n, seq_len]; disjoint by construction."""

    train: torch.Tensor
    eval: torch.Tensor
    calibration: torch.Tensor
    seq_len: int
    total_tokens: int  # tokens in the corpus stream (before the partial last sequence is dropped)

    def info(self) -> dict[str, Any]:
        """Sizes of the splits (the sharded path's ShardedSplits.info adds its sources to these)."""
        return {
            "seq_len": self.seq_len,
            "total_tokens": self.total_tokens,
            "train_sequences": len(self.train),
            "eval_sequences": len(self.eval),
            "calibration_sequences": len(self.calibration),
        }


def documents(ref: str) -> list[str]:
    """The documents of a corpus reference, in a fixed order."""
    if ref.startswith("builtin:"):
        from ablate.data.sources import builtin_documents

        return builtin_documents(ref)
    path = Path(ref).expanduser()
    if not path.exists():
        raise DataError(
            f"corpus '{ref}' does not exist; use builtin:pydoc, a .txt file, or a .jsonl file with a 'text' field "
            "(Hugging Face datasets need network access, which this machine does not have)"
        )
    if path.is_dir():
        raise DataError(f"corpus '{ref}' is a directory; point at a .txt or .jsonl file")
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"corpus '{ref}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if suffix == ".txt":
        docs = [raw]
    elif suffix == ".jsonl":
        docs = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"corpus '{ref}' line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(
                    f"corpus '{ref}' line {number}: expected an object with a string 'text' field"
                )
            docs.append(record["text"])
    else:
        raise DataError(f"corpus '{ref}' has suffix '{suffix}'; expected .txt or .jsonl")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"corpus '{ref}' contains no text")
    return docs


def load_text(ref: str) -> str:
    """The whole corpus as one string (documents joined by a blank line)."""
    return DOC_SEPARATOR.join(documents(ref))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items())) + type(tokenizer).__name__
    return hashlib.sha256(f"{text}|eos={tokenizer.eos_token_id}".encode()).hexdigest()[:16]


def cache_root() -> Path:
    root = os.environ.get("ABLATE_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "ablate") / "tokens"


def token_stream(tokenizer: PreTrainedTokenizerBase, corpus_ref: str, cache: bool = True) -> torch.Tensor:
    """The corpus as one LongTensor of token ids, documents separated by EOS; cached on disk by content."""
    docs = documents(corpus_ref)
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.encode("utf-8"))
        digest.update(b"\x00")
    key = f"{digest.hexdigest()[:16]}-{tokenizer_fingerprint(tokenizer)}"
    path = cache_root() / f"{key}.pt"
    if cache and path.is_file():
        try:
            return torch.load(path, weights_only=True).long()
        except Exception:  # noqa: BLE001 - a damaged cache entry is simply rebuilt
            log.warning("token cache %s is unreadable; rebuilding it", path)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; it is needed to separate packed documents")
    ids: list[int] = []
    encoded = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
    for doc_ids in encoded:
        ids.extend(doc_ids)
        ids.append(eos)
    stream = torch.tensor(ids, dtype=torch.long)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="tmp-", suffix=".part", dir=path.parent)
            os.close(fd)
            torch.save(stream.to(torch.int32), tmp)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache tokens in %s: %s", path.parent, exc)
    return stream


def pack(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into full sequences [n, seq_len]; the incomplete tail is dropped, nothing padded."""
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def split_indices(n: int, n_eval: int, n_calibration: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eval, calibration, train) sequence indices, each ascending: one fixed permutation of the n
    sequences, eval from its front, calibration from its back, train in between."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return (
        order[:n_eval].sort().values,
        order[n - n_calibration :].sort().values,
        order[n_eval : n - n_calibration].sort().values,
    )


def token_splits(
    tokenizer: PreTrainedTokenizerBase,
    corpus_ref: str,
    seq_len: int,
    eval_tokens: int,
    calibration_samples: int,
    min_train_sequences: int = 1,
) -> Splits:
    """Packed, deterministic, disjoint train / eval / calibration splits of a corpus.

    eval gets ceil(eval_tokens / seq_len) sequences, calibration `calibration_samples` sequences, and
    train everything else (at least `min_train_sequences`).
    """
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2 (got {seq_len})")
    if eval_tokens < 0 or calibration_samples < 0:
        raise DataError("eval_tokens and calibration_samples must not be negative")
    stream = token_stream(tokenizer, corpus_ref)
    sequences = pack(stream, seq_len)
    n = len(sequences)
    n_eval = math.ceil(eval_tokens / seq_len)
    needed = n_eval + calibration_samples + min_train_sequences
    if needed > n:
        raise DataError(
            f"corpus '{corpus_ref}' has {len(stream)} tokens = {n} sequences of {seq_len}, but {n_eval} eval + "
            f"{calibration_samples} calibration + {min_train_sequences} train sequences were asked for; "
            "use a larger corpus or fewer eval tokens / calibration samples"
        )
    eval_idx, cal_idx, train_idx = split_indices(n, n_eval, calibration_samples)
    return Splits(
        train=sequences[train_idx].clone(),
        eval=sequences[eval_idx].clone(),
        calibration=sequences[cal_idx].clone(),
        seq_len=seq_len,
        total_tokens=len(stream),
    )


def batches(sequences: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """Batches [b, seq_len] for a forward pass: consecutive slices of at most `batch_size` sequences of a
    [n, seq_len] (or one [seq_len]) tensor, the last may be smaller; an iterable of [b, seq_len] (or
    [seq_len]) tensors is taken as already batched. A loader.SequenceView is sliced like a tensor."""
    if not isinstance(sequences, torch.Tensor) and not hasattr(sequences, "shape"):
        for batch in sequences:
            yield batch.unsqueeze(0) if batch.dim() == 1 else batch
        return
    if batch_size < 1:
        raise DataError(f"batch_size must be positive (got {batch_size})")
    if sequences.dim() == 1:
        sequences = sequences.unsqueeze(0)
    for start in range(0, len(sequences), batch_size):
        yield sequences[start : start + batch_size]
