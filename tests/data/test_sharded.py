"""The sharded data path: the same tokens as corpus.py, every format, resumable tokenize, clear errors."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ablate.data.corpus import token_splits, tokenizer_fingerprint
from ablate.data.loader import SourceTokens
from ablate.data.prepare import prepare_splits, sources_of
from ablate.data.shards import read_index, tokenize_source
from ablate.data.sources import Source, documents
from ablate.errors import DataError
from ablate.models.tokenizer import byte_tokenizer


def _docs(n: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "ζeta", "naïve", "日本", "x\ny", "tab\tz"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 120))) + f" #{i}" for i in range(n)]


def _reference(tok, docs: list[str]) -> np.ndarray:
    """The stream corpus.token_stream makes: each document's ids, then EOS."""
    ids: list[int] = []
    for doc_ids in tok(docs, add_special_tokens=False)["input_ids"]:
        ids += [*doc_ids, tok.eos_token_id]
    return np.array(ids)


def _stream(folder) -> np.ndarray:
    src = SourceTokens(folder, 16)
    return src.tokens(0, src.total_tokens)


def _write_formats(root, docs):
    """The same documents as a folder of .txt, .jsonl, .jsonl.gz, .parquet (3 row groups), a mixed folder."""
    (root / "txt").mkdir()
    for i, d in enumerate(docs):
        (root / "txt" / f"{i:03d}.txt").write_text(d)
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
    (root / "docs.jsonl").write_text(lines)
    (root / "docs.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    pq.write_table(
        pa.table({"id": list(range(len(docs))), "body": docs}), root / "docs.parquet", row_group_size=15
    )
    third = len(docs) // 3
    (root / "mixed").mkdir()
    (root / "mixed" / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:third]))
    (root / "mixed" / "b.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in docs[third : 2 * third]).encode())
    )
    pq.write_table(pa.table({"text": docs[2 * third :]}), root / "mixed" / "c.parquet")


def test_builtin_pydoc_splits_are_exactly_todays(tok):
    before = token_splits(tok, "builtin:pydoc", 128, 8000, 32)
    after = prepare_splits(tok, {"corpus": "builtin:pydoc", "seq_len": 128, "eval_tokens": 8000}, None, 32,
                           shard_tokens=50_000)  # fmt: skip
    assert len(after.train) == len(before.train) and after.total_tokens == before.total_tokens
    assert torch.equal(after.train[:], before.train)
    assert torch.equal(after.eval, before.eval) and torch.equal(after.calibration, before.calibration)
    assert after.info()["train_sequences"] == before.info()["train_sequences"]


def test_every_format_reads_back_the_same_tokens(tok, tmp_path):
    docs = _docs()
    _write_formats(tmp_path, docs)
    expected = _reference(tok, docs)
    refs = {
        str(tmp_path / "txt"): "text", str(tmp_path / "txt" / "*.txt"): "text", str(tmp_path / "docs.jsonl"): "text",
        str(tmp_path / "docs.jsonl.gz"): "text", str(tmp_path / "docs.parquet"): "body",
        str(tmp_path / "mixed"): "text", str(tmp_path / "**" / "mixed" / "*"): "text",
    }  # fmt: skip
    for ref, field in refs.items():
        assert list(documents(Source(ref, text_field=field))) == docs, ref
        folder = tokenize_source(
            Source(ref, text_field=field), tok, 16, tmp_path / "shards", shard_tokens=1000
        )
        assert len(read_index(folder)["shards"]) > 2
        np.testing.assert_array_equal(_stream(folder), expected, err_msg=ref)


def test_hf_dataset_saved_to_disk_reads_offline(tok, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    docs = _docs(20, seed=3)
    datasets.Dataset.from_dict({"content": docs, "n": list(range(20))}).save_to_disk(tmp_path / "one")
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(
        tmp_path / "dd"
    )
    for ref, field in ((f"hf:{tmp_path / 'one'}", "content"), (f"hf:{tmp_path / 'dd'}@validation", "text")):
        folder = tokenize_source(Source(ref, text_field=field), tok, 16, tmp_path / "shards")
        np.testing.assert_array_equal(_stream(folder), _reference(tok, docs))
    with pytest.raises(DataError, match="no split 'train'.*validation"):
        list(documents(Source(f"hf:{tmp_path / 'dd'}")))
    with pytest.raises(DataError, match="no column 'text'.*content"):
        list(documents(Source(f"hf:{tmp_path / 'one'}")))
    with pytest.raises(DataError, match="save_to_disk; name it as hf:"):
        list(documents(Source(str(tmp_path / "one"))))


def test_hf_dataset_that_needs_the_network_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError, match=r"'hf:no-such-org/no-such-set'.*needs the network.*offline.*HF_HUB_OFFLINE"
    ):
        list(documents(Source("hf:no-such-org/no-such-set")))


def test_killed_tokenize_resumes_to_identical_shards(tok, tmp_path):
    docs = _docs(60, seed=1)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    source = Source(str(tmp_path / "d.jsonl"))
    whole = tokenize_source(source, tok, 16, tmp_path / "a", shard_tokens=700)

    class Killed(Exception):
        pass

    def kill_after_3(p):
        if p.shards == 3 and not p.done:
            raise Killed

    with pytest.raises(Killed):
        tokenize_source(source, tok, 16, tmp_path / "b", shard_tokens=700, progress=kill_after_3)
    partial = read_index(tmp_path / "b" / whole.name)
    assert not partial["complete"] and len(partial["shards"]) == 3
    assert partial["shards"][-1]["carry"] > 0  # the kill fell inside a document
    seen = []
    resumed = tokenize_source(source, tok, 16, tmp_path / "b", shard_tokens=700, progress=seen.append)
    assert seen[0].documents == partial["shards"][-1]["docs_done"] and seen[-1].done
    a, b = read_index(whole), read_index(resumed)
    assert a["shards"] == b["shards"] and len(a["shards"]) > 5
    for shard in a["shards"]:
        assert (whole / shard["file"]).read_bytes() == (resumed / shard["file"]).read_bytes()
    assert not list(resumed.glob(".*.tmp"))


def test_shards_are_content_addressed(tok, tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("one two three")
    first = tokenize_source(Source(str(path)), tok, 16, tmp_path / "s")
    assert tokenize_source(Source(str(path)), tok, 16, tmp_path / "s") == first
    assert tokenize_source(Source(str(path)), tok, 32, tmp_path / "s") != first
    path.write_text("one two thref")  # same size, same name: new content, new shards
    assert tokenize_source(Source(str(path)), tok, 16, tmp_path / "s") != first


def test_uint32_when_the_vocabulary_does_not_fit_uint16(tok, tmp_path):
    big = byte_tokenizer()
    big.add_tokens([f"<t{i}>" for i in range(70_000)])
    path = tmp_path / "d.txt"
    path.write_text("hello <t69999> world")
    folder = tokenize_source(Source(str(path)), big, 4, tmp_path / "s")
    assert read_index(folder)["dtype"] == "uint32"
    assert (
        SourceTokens(folder, 4).tokens(0, 3)
        == big("hello <t69999>", add_special_tokens=False)["input_ids"][:3]
    ).all()


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "name,content,field,message",
    [
        (
            "bad.jsonl",
            '{"text": "ok"}\n{"text": "ok"}\n{not json\n',
            "text",
            r"bad\.jsonl line 3 is not valid JSON",
        ),
        (
            "bad.jsonl",
            '{"text": "ok"}\n{"body": "x"}\n',
            "text",
            r"line 2 has no 'text' field \(it has body\).*text_field",
        ),
        ("bad.jsonl", '{"text": 5}\n', "text", r"line 1: 'text' is int, not a string"),
        ("bad.txt", b"caf\xe9", "text", r"bad\.txt is not UTF-8.*byte 3.*convert it"),
        ("bad.jsonl", b'{"text": "caf\xe9"}\n', "text", r"bad\.jsonl line 1 is not UTF-8"),
        ("bad.jsonl.gz", b"not gzip", "text", r"not a complete gzip file"),
        ("bad.csv", "a,b", "text", r"suffix '\.csv'; expected one of"),
    ],
)
def test_bad_files_are_named_with_the_fix(tok, tmp_path, name, content, field, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        tokenize_source(Source(str(path), text_field=field), tok, 16, tmp_path / "shards")


def test_parquet_without_the_column(tok, tmp_path):
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet has no column 'text' \(columns: body\); set text_field"):
        list(documents(Source(str(tmp_path / "p.parquet"))))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"column 'text' of .* is int64, not text"):
        list(documents(Source(str(tmp_path / "n.parquet"))))


def test_paths_that_match_nothing(tmp_path):
    for ref, message in (
        (str(tmp_path / "nowhere.jsonl"), "does not exist; name"),
        (str(tmp_path / "*.jsonl"), r"the glob matches no .* file; fix the pattern"),
        (str(tmp_path), r"folder with no .* file"),
    ):
        with pytest.raises(DataError, match=message):
            list(documents(Source(ref)))


def test_a_bad_line_late_in_a_file_leaves_nothing_half_written(tok, tmp_path):
    lines = [json.dumps({"text": d}) for d in _docs(200, seed=2)] + ["{oops"]
    (tmp_path / "late.jsonl").write_text("\n".join(lines))
    with pytest.raises(DataError, match="line 201 is not valid JSON"):
        tokenize_source(Source(str(tmp_path / "late.jsonl")), tok, 16, tmp_path / "shards", shard_tokens=500)
    assert not any((tmp_path / "shards").iterdir())


def test_weights_must_be_positive_and_forms_exclusive():
    from pydantic import ValidationError

    from ablate.spec.schema import Data

    for weight in (0, -1):
        with pytest.raises(ValidationError, match=r"sources\.0\.weight"):
            Data(sources=[{"path": "a.jsonl", "weight": weight}])
        with pytest.raises(DataError, match=r"data\.sources\[0\]\.weight is .*greater than 0"):
            sources_of({"sources": [{"path": "a.jsonl", "weight": weight}]})
    with pytest.raises(ValidationError, match="corpus and data.sources are both set"):
        Data(corpus="a.txt", sources=[{"path": "b.txt"}])
    assert Data().model_dump() == {"corpus": "builtin:pydoc", "seq_len": 128, "eval_tokens": 8000}
    assert "corpus" not in Data(sources=[{"path": "b.txt"}]).model_dump()


def test_shards_of_another_tokenizer_are_refused(tok, tmp_path):
    folder = tokenize_source(Source("builtin:pydoc"), tok, 64, tmp_path / "s")
    other = byte_tokenizer()
    other.add_tokens(["<extra>"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    data = {"sources": [{"path": str(folder)}], "seq_len": 64, "eval_tokens": 640}
    assert len(prepare_splits(tok, data, None, 4).eval) == 10
    with pytest.raises(
        DataError, match=r"made with tokenizer .* teacher's tokenizer is .*ablate data prepare"
    ):
        prepare_splits(other, data, None, 4)


@pytest.mark.slow  # spawns two tokenizer processes
def test_two_processes_write_the_same_shards_and_resume_after_a_kill(tok, tmp_path, monkeypatch):
    monkeypatch.setattr("ablate.data.shards.BATCH_CHARS", 2000)  # many batches in flight
    docs = _docs(120, seed=4)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    source = Source(str(tmp_path / "d.jsonl"))
    one = tokenize_source(source, tok, 16, tmp_path / "one", shard_tokens=900)

    def kill_after_4(p):
        if p.shards == 4 and not p.done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenize_source(source, tok, 16, tmp_path / "two", shard_tokens=900, workers=2, progress=kill_after_4)
    two = tokenize_source(source, tok, 16, tmp_path / "two", shard_tokens=900, workers=2)
    assert read_index(one)["shards"] == read_index(two)["shards"]
    np.testing.assert_array_equal(_stream(two), _reference(tok, docs))
