"""The plan's data table: each source's share, the tokens its shards hold, and a warning for a source
the budget will repeat (read from the shard index; nothing loaded but the tokenizer)."""

from __future__ import annotations

import json

from ablate.commands.plan import plan_dict
from ablate.spec.validate import load_spec

SPEC = """
name: blend
teacher: {model: builtin:tiny-mistral}
data:
  sources:
    - {path: builtin:pydoc, weight: 3}
    - {path: small.jsonl, weight: 1}
  seq_len: 64
  eval_tokens: 256
calibration: {samples: 4, batch_size: 4}
targets: {w: {hidden_size: 48}}
distill: {tokens: 200k, global_batch: 8, micro_batch: 4}
"""


def test_plan_shows_tokens_per_source_and_warns_on_repeats(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    docs = [{"text": f"document {i}: " + "words of a small corpus " * 20} for i in range(40)]
    (tmp_path / "small.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "blend.yaml").write_text(SPEC)
    loaded = load_spec(tmp_path / "blend.yaml")

    before = plan_dict(loaded, 0.4)["data"]
    assert [r["tokens"] for r in before["sources"]] == [None, None]  # not tokenized yet: no guess
    assert [round(r["share"], 3) for r in before["sources"]] == [0.75, 0.25]
    assert before["warnings"] == []

    from ablate.data.prepare import prepare_splits
    from ablate.models.registry import load_tokenizer

    splits = prepare_splits(
        load_tokenizer("builtin:tiny-mistral"), loaded.spec.data.model_dump(), tmp_path, 4
    )
    plan = plan_dict(loaded, 0.4)
    small = plan["data"]["sources"][1]
    assert small["tokens"] == splits.info()["sources"][1]["tokens"]
    assert small["budget_tokens"] == 50_000 and small["epochs"] > 1
    assert plan["data"]["sources"][0]["epochs"] < 1
    (warning,) = plan["data"]["warnings"]
    assert "small.jsonl" in warning and "repeats" in warning and warning in plan["warnings"]
