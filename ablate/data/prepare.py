"""The one entry point of the data path: a stage's `data` settings -> shards on disk -> splits.

`prepare_splits` is what runners call in place of corpus.token_splits: it tokenizes every source that
has no finished shards yet (the content-addressed `tokenize` stage; a killed run resumes), memory-maps
them and cuts the splits (loader.build_splits). Shards live in the ablate cache next to the token cache
corpus.py always kept ($ABLATE_CACHE/tokens/shards, else ~/.cache/ablate/tokens/shards): they depend
only on the source's content, the tokenizer and seq_len, never on a run, so every run, trial and spec
reading the same data shares them, as Hugging Face's datasets cache and litdata's cache dir do.
A source may also name a folder of shards made earlier (one holding an ablate `index.json`); its
tokenizer must be the teacher's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ablate.data.loader import ShardedSplits, SourceTokens, build_splits
from ablate.data.shards import SHARD_TOKENS, ProgressFn, read_index, tokenize_source
from ablate.data.sources import Source, sources_of
from ablate.errors import DataError


def shards_root(cache_dir: str | Path | None = None) -> Path:
    from ablate.data.corpus import cache_root

    return Path(cache_dir) if cache_dir is not None else cache_root() / "shards"


def is_shard_folder(path: str) -> bool:
    folder = Path(path).expanduser()
    return not path.startswith(("builtin:", "hf:")) and folder.is_dir() and read_index(folder) is not None


def tokenize_all(
    tokenizer: Any,
    sources: list[Source],
    seq_len: int,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    workers: int = 1,
    shard_tokens: int = SHARD_TOKENS,
) -> list[Path]:
    """The shard folder of every source, tokenizing those not yet done (the `tokenize` stages)."""
    root = shards_root(cache_dir)
    folders = []
    for source in sources:
        if is_shard_folder(source.path):
            folders.append(Path(source.path).expanduser())
        else:
            folders.append(
                tokenize_source(
                    source,
                    tokenizer,
                    seq_len,
                    root,
                    shard_tokens=shard_tokens,
                    workers=workers,
                    progress=progress,
                )
            )
    return folders


def open_sources(tokenizer: Any, folders: list[Path], seq_len: int) -> list[SourceTokens]:
    """The shards memory-mapped, each checked against the tokenizer that will read them."""
    from ablate.data.corpus import tokenizer_fingerprint

    fp = tokenizer_fingerprint(tokenizer)
    return [SourceTokens(folder, seq_len, fp) for folder in folders]


def prepare_splits(
    tokenizer: Any,
    data_settings: Mapping[str, Any],
    base_dir: str | Path | None,
    calibration_samples: int,
    progress: ProgressFn | None = None,
    *,
    train_samples: int | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    shard_tokens: int = SHARD_TOKENS,
    min_train_sequences: int = 1,
) -> ShardedSplits:
    """Train / eval / calibration splits of `data_settings` (a spec's `data` section as a dict:
    `corpus` or `sources`, `seq_len`, `eval_tokens`), tokenizing what is not yet on disk.

    `train_samples` is the length of the blended train order (e.g. the budget's sequences); by default
    the longest in which no source repeats. For one source it is that source's train split.
    """
    seq_len, eval_tokens = int(data_settings["seq_len"]), int(data_settings["eval_tokens"])
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2 (got {seq_len})")
    if eval_tokens < 0 or calibration_samples < 0:
        raise DataError("eval_tokens and calibration_samples must not be negative")
    if train_samples is not None and train_samples < 1:
        raise DataError(f"train_samples must be positive (got {train_samples})")
    sources = sources_of(data_settings, base_dir)
    folders = tokenize_all(tokenizer, sources, seq_len, cache_dir, progress, workers, shard_tokens)
    seen: dict[Path, str] = {}
    for source, folder in zip(sources, folders, strict=True):
        if folder.resolve() in seen:
            raise DataError(
                f"data.sources names the same data twice ('{seen[folder.resolve()]}' and '{source.path}'); one "
                "source's eval split would be another's training data -- list it once with the summed weight"
            )
        seen[folder.resolve()] = source.path
    opened = open_sources(tokenizer, folders, seq_len)
    return build_splits(
        opened, [s.weight for s in sources], seq_len, eval_tokens, calibration_samples, train_samples,
        min_train_sequences,
    )  # fmt: skip
