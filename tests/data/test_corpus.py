"""Corpora: reading, packing without padding, deterministic disjoint splits, the token cache."""

from __future__ import annotations

import json

import pytest
import torch

from ablate.data.corpus import batches, documents, load_text, pack, token_splits, token_stream
from ablate.errors import DataError


@pytest.fixture
def numbered(tmp_path):
    """A corpus in which every 16-byte chunk is unique, so split disjointness is observable."""
    path = tmp_path / "numbers.txt"
    path.write_text("".join(f"{i:015d}." for i in range(400)))
    return str(path)


def test_builtin_pydoc_is_english_and_stable():
    text = load_text("builtin:pydoc")
    assert len(text) > 400_000 and "assert" in text
    assert load_text("builtin:pydoc") == text


def test_txt_and_jsonl_corpora(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world")
    assert documents(str(txt)) == ["hello world"]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "id": 2}) + "\n")
    assert documents(str(jsonl)) == ["one", "two"]
    assert load_text(str(jsonl)) == "one\n\ntwo"


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("bad.jsonl", '{"text": "ok"}\n{oops\n', "line 2: not valid JSON"),
        ("bad.jsonl", '{"text": "ok"}\n{"body": "x"}\n', "line 2: expected an object with a string 'text'"),
        ("empty.txt", "   \n", "contains no text"),
        ("data.csv", "a,b\n", "expected .txt or .jsonl"),
    ],
)
def test_bad_corpora_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        documents(str(path))


def test_missing_and_unknown_corpora(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        documents(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="unknown built-in corpus"):
        documents("builtin:wikipedia")


def test_stream_separates_documents_with_eos(tmp_path, tok):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "ab"}\n{"text": "c"}\n')
    assert token_stream(tok, str(jsonl)).tolist() == [97, 98, 257, 99, 257]


def test_splits_are_packed_disjoint_and_deterministic(tok, numbered):
    stream = token_stream(tok, numbered)
    splits = token_splits(tok, numbered, seq_len=16, eval_tokens=100, calibration_samples=10)
    assert splits.eval.shape == (7, 16) and splits.calibration.shape == (10, 16)
    assert splits.train.shape == (400 - 17, 16)
    assert all(t.dtype == torch.long for t in (splits.train, splits.eval, splits.calibration))
    chunks = {tuple(row) for row in pack(stream, 16).tolist()}
    rows = {
        name: {tuple(r) for r in getattr(splits, name).tolist()} for name in ("train", "eval", "calibration")
    }
    assert sum(len(r) for r in rows.values()) == 400  # every sequence used exactly once
    assert (
        rows["train"] | rows["eval"] | rows["calibration"] == chunks
    )  # full chunks of the stream, no padding
    assert not rows["train"] & rows["eval"] and not rows["train"] & rows["calibration"]
    assert not rows["eval"] & rows["calibration"]
    assert tok.pad_token_id not in splits.train
    again = token_splits(tok, numbered, seq_len=16, eval_tokens=100, calibration_samples=10)
    assert torch.equal(again.train, splits.train) and torch.equal(again.eval, splits.eval)
    assert torch.equal(again.calibration, splits.calibration)


def test_eval_does_not_depend_on_calibration_size_and_vice_versa(tok, numbered):
    a = token_splits(tok, numbered, 16, eval_tokens=160, calibration_samples=5)
    b = token_splits(tok, numbered, 16, eval_tokens=160, calibration_samples=50)
    c = token_splits(tok, numbered, 16, eval_tokens=800, calibration_samples=5)
    assert torch.equal(a.eval, b.eval)
    assert torch.equal(a.calibration, c.calibration)
    # eval sets are nested: more eval tokens add sequences, never swap them
    assert {tuple(r) for r in a.eval.tolist()} <= {tuple(r) for r in c.eval.tolist()}


def test_eval_is_spread_over_the_corpus(tok, numbered):
    splits = token_splits(tok, numbered, 16, eval_tokens=40 * 16, calibration_samples=0)
    positions = sorted(int(bytes(row[:15].tolist()).decode()) for row in splits.eval)
    assert positions[0] < 100 and positions[-1] > 300


def test_too_small_corpus_is_a_clear_error(tok, numbered):
    with pytest.raises(DataError, match="400 sequences of 16"):
        token_splits(tok, numbered, 16, eval_tokens=16 * 300, calibration_samples=100)


def test_token_cache_is_used_and_survives_damage(tok, tmp_path, numbered):
    first = token_stream(tok, numbered)
    cached = list((tmp_path / "cache" / "tokens").glob("*.pt"))
    assert len(cached) == 1
    cached[0].write_bytes(b"garbage")
    assert torch.equal(token_stream(tok, numbered), first)
    assert torch.equal(token_stream(tok, numbered), first)


def test_batches():
    seqs = torch.arange(70).view(7, 10)
    out = list(batches(seqs, 3))
    assert [len(b) for b in out] == [3, 3, 1]
    assert torch.equal(torch.cat(out), seqs)
    with pytest.raises(DataError):
        list(batches(seqs, 0))
