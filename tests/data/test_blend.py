"""The loader: weighted blend proportions, exact token accounting, a tensor's indexing, resume and ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ablate.data.corpus import batches
from ablate.data.loader import blend_order, shares
from ablate.data.prepare import prepare_splits
from ablate.distill.data_order import DataOrder
from ablate.distill.parallel import Parallel
from ablate.errors import DataError


def _source(path, tag: str, n_docs: int) -> str:
    """A JSONL source whose every sequence says which source it came from (letters of `tag`)."""
    path.write_text("".join(json.dumps({"text": f"{tag}{i:05d}" * 7}) + "\n" for i in range(n_docs)))
    return str(path)


@pytest.fixture
def blend(tmp_path):
    return {
        "sources": [
            {"path": _source(tmp_path / "a.jsonl", "a", 300), "weight": 5},
            {"path": _source(tmp_path / "b.jsonl", "b", 150), "weight": 3},
            {"path": _source(tmp_path / "c.jsonl", "c", 40), "weight": 2},
        ],
        "seq_len": 32,
        "eval_tokens": 320,
    }


def test_blend_proportions_within_one_percent_over_10k_samples(tok, blend):
    splits = prepare_splits(tok, blend, None, 8, train_samples=10_000)
    train = splits.train[:]
    tags = torch.tensor([ord(x) for x in "abc"])
    letters = [chr(int(row[torch.isin(row, tags)][0])) for row in train]  # each sample names its source
    assert {x: letters.count(x) / 10_000 for x in "abc"} == pytest.approx(
        {"a": 0.5, "b": 0.3, "c": 0.2}, abs=0.01
    )
    for i in (100, 1234, 9999):  # every prefix is within one sample of each share
        ids = splits.train.source_ids[:i]
        assert all(abs((ids == j).sum() - w * i) <= 1 for j, w in enumerate((0.5, 0.3, 0.2)))
    info = {s["source"][-7]: s for s in splits.info()["sources"]}
    assert info["c"]["epochs"] > info["a"]["epochs"] > 1  # sources repeat (the small one most), in order
    c_rows = splits.train.row_ids[splits.train.source_ids == 2]
    n_c = info["c"]["train_sequences"]
    assert (c_rows[n_c : 2 * n_c] == c_rows[:n_c]).all()


def test_exact_token_accounting_and_disjoint_splits(tok, blend):
    splits = prepare_splits(tok, blend, None, 8)
    for s in splits.info()["sources"]:
        assert s["sequences"] * 32 + s["dropped_tokens"] == s["tokens"]
        assert s["eval_sequences"] + s["calibration_sequences"] + s["train_sequences"] == s["sequences"]
    assert [s["eval_sequences"] for s in splits.sources] == shares(10, [5, 3, 2]) == [5, 3, 2]
    assert len(splits.calibration) == 8 and len(splits.eval) == 10
    assert max(s["epochs"] for s in splits.sources) == pytest.approx(
        1.0, abs=0.01
    )  # default: nothing repeats
    seen = {tuple(r.tolist()) for r in splits.train[:]}
    assert not seen & {tuple(r.tolist()) for r in splits.eval}
    assert not seen & {tuple(r.tolist()) for r in splits.calibration}


def test_a_view_indexes_like_the_tensor_it_stands_for(tok, blend):
    view = prepare_splits(tok, blend, None, 8, train_samples=500).train
    full = view.tensor()
    assert (
        full.shape == view.shape == (500, 32) and full.dtype == view.dtype == torch.long and len(view) == 500
    )
    for key in (3, -1, slice(10, 20), slice(None, None, 7), slice(495, 900), torch.tensor([9, 2, 2, 499]),
                [0, -2], np.array([7, 1]), torch.arange(500) % 3 == 0):  # fmt: skip
        assert torch.equal(view[key], full[key]), key
    with pytest.raises(IndexError):
        view[500]
    assert all(torch.equal(x, y) for x, y in zip(batches(view, 64), batches(full, 64), strict=True))


def test_resume_at_step_k_and_two_ranks_see_the_uninterrupted_batches(tok, blend):
    data_settings, global_batch = blend, 8
    splits = prepare_splits(tok, data_settings, None, 8, train_samples=300)
    order = DataOrder(seed=7, n=len(splits.train))
    uninterrupted = [splits.train[order.indices(step * global_batch, global_batch)] for step in range(60)]
    # A resumed process: the splits rebuilt from the shards on disk, the order from the seed, from step 25.
    again = prepare_splits(tok, data_settings, None, 8, train_samples=300)
    order2 = DataOrder(seed=7, n=len(again.train))
    for step in range(25, 60):
        idx = order2.indices(step * global_batch, global_batch)
        assert torch.equal(again.train[idx], uninterrupted[step])
        ranks = [again.train[Parallel("ddp", r, 2).shard(idx)] for r in range(2)]
        assert torch.equal(torch.cat(ranks), uninterrupted[step])


def test_blend_order_is_exact_and_deterministic():
    ids = blend_order([1, 1, 2], 8)
    assert ids.tolist() == blend_order([1, 1, 2], 8).tolist() == [2, 0, 1, 2, 2, 0, 1, 2]
    assert np.bincount(blend_order([0.7, 0.3], 1000)).tolist() == [700, 300]


def test_a_source_too_small_for_its_share_is_named(tok, tmp_path):
    data = {"sources": [{"path": _source(tmp_path / "big.jsonl", "a", 200)},
                        {"path": _source(tmp_path / "tiny.jsonl", "b", 2)}], "seq_len": 32, "eval_tokens": 3200}  # fmt: skip
    with pytest.raises(DataError, match=r"tiny\.jsonl' has .* 50 eval .* smaller weight"):
        prepare_splits(tok, data, None, 0)
    same = {
        "sources": [{"path": "builtin:pydoc"}, {"path": "builtin:pydoc", "weight": 2}],
        "seq_len": 32,
        "eval_tokens": 32,
    }
    with pytest.raises(DataError, match="same data twice"):
        prepare_splits(tok, same, None, 0)
