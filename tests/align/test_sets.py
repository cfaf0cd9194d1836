"""The shipped alignment sets and the data layer of the align section: columns checked with the record
named, a deterministic held-out split, the files what make_sets writes."""

from __future__ import annotations

import json
import sys

import pytest

from ablate.align.sets import AlignDataError, load_set, resolve


def test_shipped_sets_load_in_their_methods_form():
    instruct = load_set("builtin:pydoc-instruct", "sft", 0.1)
    prefs = load_set("builtin:pydoc-prefs", "dpo", 0.1)
    assert len(instruct.train) + len(instruct.held_out) == 238
    assert len(prefs.train) + len(prefs.held_out) == 170
    record = instruct.train[0]
    assert record["prompt"][-1]["role"] == "user" and record["completion"][0]["role"] == "assistant"
    pair = prefs.held_out[0]
    assert pair["chosen"][0]["content"] != pair["rejected"][0]["content"]
    # the split is a hash of each record: the same every time, and about the share asked for
    assert load_set("builtin:pydoc-prefs", "dpo", 0.1).held_out == prefs.held_out
    assert 0.05 < len(prefs.held_out) / 170 < 0.2


def test_a_preference_set_without_chosen_and_rejected_is_named(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "chosen": "hello"}) + "\n")
    with pytest.raises(
        AlignDataError, match=r"record 1: no rejected \(method dpo needs prompt, chosen, rejected"
    ):
        load_set(str(path), "dpo", 0.1)
    with pytest.raises(AlignDataError, match="no such file"):
        resolve(str(tmp_path / "missing.jsonl"))
    with pytest.raises(AlignDataError, match="unknown alignment set 'builtin:nope'"):
        resolve("builtin:nope")


def test_sft_messages_must_end_with_the_answer(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}] * 3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AlignDataError, match="must end with the assistant's turn"):
        load_set(str(path), "sft", 0.3)


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11), reason="the shipped sets were made from Python 3.11's docs"
)
def test_the_shipped_files_are_what_make_sets_writes():
    from ablate.align.make_sets import INSTRUCT_FILE, PREFS_FILE, build_sets

    instruct, prefs = build_sets()
    assert [json.loads(line) for line in INSTRUCT_FILE.read_text().splitlines()] == instruct
    assert [json.loads(line) for line in PREFS_FILE.read_text().splitlines()] == prefs
