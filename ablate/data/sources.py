"""Data sources: what a `data.sources[].path` names, its documents as a stream, and its content fingerprint.

A source is `builtin:pydoc`; a local file, folder or glob of .txt (one document per file), .jsonl /
.jsonl.gz (one document per line, in `text_field`) and .parquet (`text_field` column, read one record
batch at a time); or a Hugging Face dataset `hf:ORG/NAME[:config][@split]` (or `hf:FOLDER` written by
`save_to_disk`). Documents are yielded one at a time in a fixed order (files sorted by path), so memory
does not grow with the corpus; blank documents are skipped, as corpus.py always did.

The fingerprint is a hash of content, never of names, sizes or mtimes alone (a file rewritten in the
same second with the same size would otherwise reuse stale tokens): local files by their sha256 -- read
once, and memoised per (path, size, mtime_ns, inode) the way git's index does, so an unchanged
terabyte corpus is not re-hashed on every run -- plus their suffix and order and the text field; Hugging
Face datasets by the dataset's own fingerprint (a saved or cached dataset) or the hub's commit sha.
"""

from __future__ import annotations

import functools
import glob as globlib
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.errors import DataError

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
BUILTINS = ("pydoc",)
PARQUET_BATCH_ROWS = 1024
_HINT = "a local .txt/.jsonl/.jsonl.gz/.parquet file, folder or glob, builtin:pydoc, or hf:ORG/NAME[:config][@split]"


@dataclass(frozen=True)
class Source:
    """One entry of `data.sources`: where the documents are, how much of the blend they get, which field."""

    path: str
    weight: float = 1.0
    text_field: str = "text"


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else path.suffix.lower()


def resolve_path(ref: str, base_dir: str | Path | None) -> str:
    """A relative local path or glob is taken relative to the spec's folder when it matches there."""
    if ref.startswith(("builtin:", "hf:")) or base_dir is None or Path(ref).expanduser().is_absolute():
        return ref
    candidate = str(Path(base_dir) / ref)
    return candidate if globlib.glob(candidate, recursive=True) else ref


def local_files(ref: str) -> list[Path]:
    """The files a local path, folder or glob names, sorted; refuses a name that matches nothing."""
    path = Path(ref).expanduser()
    if globlib.has_magic(ref):
        matched = [Path(p) for p in globlib.glob(str(path), recursive=True)]
        files = sorted(p for p in matched if p.is_file() and suffix_of(p) in SUFFIXES)
        if not files:
            raise DataError(
                f"source '{ref}': the glob matches no {'/'.join(SUFFIXES)} file"
                f"{f' ({len(matched)} other paths)' if matched else ''}; fix the pattern (use ** for subfolders)"
            )
        return files
    if not path.exists():
        raise DataError(f"source '{ref}' does not exist; name {_HINT}")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            raise DataError(
                f"source '{ref}' is a folder written by datasets' save_to_disk; name it as hf:{ref}"
            )
        everything = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        files = [p for p in everything if suffix_of(p) in SUFFIXES]
        if not files:
            raise DataError(
                f"source '{ref}' is a folder with no {'/'.join(SUFFIXES)} file; point at the data files"
            )
        if len(files) < len(everything):
            log.warning(
                "source '%s': %d files with other suffixes skipped", ref, len(everything) - len(files)
            )
        return files
    if suffix_of(path) not in SUFFIXES:
        raise DataError(
            f"source '{ref}' has suffix '{suffix_of(path)}'; expected one of {', '.join(SUFFIXES)}"
        )
    return [path]


def sources_of(data: Mapping[str, Any], base_dir: str | Path | None = None) -> list[Source]:
    """The sources a `data` section names (`sources`, or `corpus` as one source of weight 1), with
    relative paths resolved against the spec's folder."""
    raw = data.get("sources")
    if raw and data.get("corpus") is not None:
        raise DataError(
            "data.corpus and data.sources are both set; keep one (corpus is one source of weight 1)"
        )
    if not raw:
        corpus = data.get("corpus") or "builtin:pydoc"
        return [Source(resolve_path(corpus, base_dir))]
    out = []
    for k, item in enumerate(raw):
        weight = float(item.get("weight", 1.0))
        if not weight > 0:
            raise DataError(f"data.sources[{k}].weight is {weight}; a weight must be greater than 0")
        out.append(Source(resolve_path(item["path"], base_dir), weight, item.get("text_field") or "text"))
    return out


# ----------------------------------------------------------------------------------------- documents


def documents(source: Source) -> Iterator[str]:
    """The source's non-blank documents, one at a time, in a fixed order."""
    ref = source.path
    if ref.startswith("builtin:"):
        yield from (d for d in builtin_documents(ref) if d.strip())
    elif ref.startswith("hf:"):
        yield from (d for d in _hf_documents(ref, source.text_field) if d.strip())
    else:
        for file in local_files(ref):
            yield from (d for d in _file_documents(ref, file, source.text_field) if d.strip())


def builtin_documents(ref: str) -> list[str]:
    """The documents of a `builtin:` corpus, in a fixed order (the one definition of each built-in)."""
    name = ref.removeprefix("builtin:")
    if name == "pydoc":
        import pydoc_data.topics

        topics = pydoc_data.topics.topics
        return [topics[key] for key in sorted(topics)]
    raise DataError(
        f"unknown built-in corpus '{ref}' (built-ins: {', '.join('builtin:' + n for n in BUILTINS)})"
    )


def _decode(ref: str, file: Path, raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"source '{ref}': {file}{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "convert it to UTF-8 (e.g. iconv -t UTF-8)"
        ) from exc


def _file_documents(ref: str, file: Path, field: str) -> Iterator[str]:
    suffix = suffix_of(file)
    if suffix == ".txt":
        yield _decode(ref, file, file.read_bytes(), "")
    elif suffix == ".parquet":
        yield from _parquet_documents(ref, file, field)
    else:
        opener = gzip.open if suffix == ".jsonl.gz" else open
        try:
            with opener(file, "rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    yield from _jsonl_line(ref, file, number, raw, field)
        except (gzip.BadGzipFile, EOFError) as exc:
            raise DataError(
                f"source '{ref}': {file} is not a complete gzip file ({exc}); re-compress it"
            ) from exc


def _jsonl_line(ref: str, file: Path, number: int, raw: bytes, field: str) -> Iterator[str]:
    line = _decode(ref, file, raw, f" line {number}")
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"source '{ref}': {file} line {number} is not valid JSON ({exc.msg}); each line must be one JSON object"
        ) from exc
    if not isinstance(record, dict) or field not in record:
        keys = f" (it has {', '.join(sorted(record)[:8])})" if isinstance(record, dict) else ""
        raise DataError(
            f"source '{ref}': {file} line {number} has no '{field}' field{keys}; set text_field to the field "
            "that holds the text"
        )
    if not isinstance(record[field], str):
        raise DataError(
            f"source '{ref}': {file} line {number}: '{field}' is {type(record[field]).__name__}, not a string; "
            "set text_field to a field that holds text"
        )
    yield record[field]


def _parquet_documents(ref: str, file: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"source '{ref}': {file} is not a readable Parquet file ({exc})") from exc
    names = reader.schema_arrow.names
    if field not in names:
        raise DataError(
            f"source '{ref}': Parquet file {file} has no column '{field}' (columns: {', '.join(names[:12])}); "
            "set text_field to the column that holds the text"
        )
    kind = reader.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(
            f"source '{ref}': Parquet column '{field}' of {file} is {kind}, not text; set text_field to a string column"
        )
    row = 0
    try:
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if text is None:
                    raise DataError(
                        f"source '{ref}': {file} row {row} has no value in column '{field}'; drop or fill the null rows"
                    )
                yield text
    except pa.ArrowInvalid as exc:  # invalid UTF-8 in a string column, a truncated file
        raise DataError(
            f"source '{ref}': {file} cannot be read near row {row + 1} ({exc}); rewrite the file"
        ) from exc


# ------------------------------------------------------------------------------------- Hugging Face


@dataclass(frozen=True)
class HFRef:
    name: str
    config: str | None
    split: str


def parse_hf(ref: str) -> HFRef:
    """`hf:ORG/NAME[:config][@split]` (split defaults to train); a local folder keeps its whole path."""
    body = ref.removeprefix("hf:")
    body, _, split = body.partition("@")
    if Path(body).expanduser().is_dir():
        return HFRef(str(Path(body).expanduser()), None, split or "train")
    name, _, config = body.partition(":")
    if not name or name.count("/") > 1:
        raise DataError(
            f"source '{ref}': expected hf:ORG/NAME[:config][@split] or hf:FOLDER (from save_to_disk)"
        )
    return HFRef(name, config or None, split or "train")


def hf_offline() -> bool:
    """Offline when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE says so, or when the hub cannot be reached
    (one 3-second connection attempt, instead of the hub client's half a minute of retries)."""
    if any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return True
    return not _hub_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@functools.cache
def _hub_reachable(endpoint: str) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=3).close()
        return True
    except OSError:
        return False


@contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """datasets reads the offline variables once, at import; set after it they would be ignored."""
    import huggingface_hub.constants as hub

    saved = {
        (m, k): getattr(m, k)
        for m in (datasets.config, hub)
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        if hasattr(m, k)
    }
    for module, key in saved:
        setattr(module, key, True)
    try:
        yield
    finally:
        for (module, key), value in saved.items():
            setattr(module, key, value)


def _hf_dataset(ref: str) -> tuple[Any, bool]:
    """(dataset, streaming): a saved folder or the local cache when offline, a streaming dataset online."""
    import datasets

    hf = parse_hf(ref)
    if Path(hf.name).is_dir():
        loaded = datasets.load_from_disk(hf.name)
        if isinstance(loaded, datasets.DatasetDict):
            if hf.split not in loaded:
                raise DataError(
                    f"source '{ref}' has no split '{hf.split}' (splits: {', '.join(loaded)}); add @SPLIT"
                )
            loaded = loaded[hf.split]
        return loaded, False
    if hf_offline():
        try:
            with _offline(datasets):
                return datasets.load_dataset(hf.name, hf.config, split=hf.split), False
        except Exception as exc:  # noqa: BLE001 - the hub client raises many kinds for 'not cached'
            raise DataError(
                f"source '{ref}' needs the network: the dataset is not in the local Hugging Face cache and "
                f"this machine is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set, or the hub unreachable) "
                f"({type(exc).__name__}); download it once online, "
                "or save_to_disk it and name the folder as hf:FOLDER"
            ) from exc
    try:
        return datasets.load_dataset(hf.name, hf.config, split=hf.split, streaming=True), True
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"source '{ref}' cannot be opened from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            "check the name, or set HF_HUB_OFFLINE=1 to read it from the local cache"
        ) from exc


def _hf_documents(ref: str, field: str) -> Iterator[str]:
    dataset, _ = _hf_dataset(ref)
    columns = list(dataset.column_names or [])
    if columns and field not in columns:
        raise DataError(
            f"source '{ref}' has no column '{field}' (columns: {', '.join(columns[:12])}); set text_field"
        )
    for batch in dataset.select_columns([field]).iter(batch_size=PARQUET_BATCH_ROWS):
        for text in batch[field]:
            if not isinstance(text, str):
                raise DataError(
                    f"source '{ref}': column '{field}' holds {type(text).__name__}, not text; set text_field"
                )
            yield text


def _hf_fingerprint(ref: str) -> str:
    hf = parse_hf(ref)
    dataset, streaming = _hf_dataset(ref)
    if not streaming:
        return f"{dataset._fingerprint}"
    from huggingface_hub import HfApi

    return HfApi().dataset_info(hf.name).sha or ""


# -------------------------------------------------------------------------------------- fingerprints


def file_sha256(path: Path) -> str:
    """The file's sha256, memoised by (path, size, mtime_ns, inode) in the ablate cache."""
    from ablate.data.corpus import cache_root

    stat = path.stat()
    stamp = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    memo = cache_root() / "sha256" / hashlib.sha256(stamp.encode()).hexdigest()[:32]
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(digest)
        os.replace(tmp, memo)
    except OSError as exc:
        log.debug("cannot memoise the hash of %s: %s", path, exc)
    return digest


def fingerprint(source: Source) -> str:
    """A hash of the source's content and of how it is read (text field, formats, file order)."""
    ref = source.path
    h = hashlib.sha256(f"ablate-source-v1|{source.text_field}|".encode())
    if ref.startswith("builtin:"):
        for doc in builtin_documents(ref):
            h.update(doc.encode("utf-8") + b"\x00")
    elif ref.startswith("hf:"):
        hf = parse_hf(ref)
        h.update(f"hf|{hf.config}|{hf.split}|{_hf_fingerprint(ref)}".encode())
    else:
        for file in local_files(ref):
            h.update(f"{suffix_of(file)}|{file_sha256(file)}\n".encode())
    return h.hexdigest()[:32]


def stamp(source: Source) -> str | None:
    """A cheap change detector for the plan's `tokenize` stage identity, computed without reading any
    data: builtin text by its content (small), local files by name, size and mtime, a Hugging Face
    dataset by its reference (its revision is known only when it is read). None when the path matches
    nothing yet: the stage then fails with local_files' message when it runs. The shards themselves stay
    addressed by `fingerprint` (content), so a stale stamp can never make a stage read stale tokens."""
    ref = source.path
    if ref.startswith("builtin:"):
        return _builtin_stamp(ref, source.text_field)
    if ref.startswith("hf:"):
        return ref
    index = Path(ref).expanduser() / "index.json"  # a folder of shards made earlier
    if index.is_file():
        return hashlib.sha256(index.read_bytes()).hexdigest()[:16]
    try:
        files = local_files(ref)
    except DataError:
        return None
    h = hashlib.sha256()
    for file in files:
        st = file.stat()
        h.update(f"{file.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _builtin_stamp(ref: str, text_field: str) -> str:
    """A built-in corpus's fingerprint, once per process (its text is fixed; a large grid asks per trial)."""
    return fingerprint(Source(ref, 1.0, text_field))
