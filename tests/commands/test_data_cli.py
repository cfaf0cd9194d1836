"""`ablate data prepare` and `ablate data inspect` on a blend of two sources."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ablate.cli import main

SPECS = Path(__file__).parents[2] / "specs"


def _spec(tmp_path: Path) -> Path:
    (tmp_path / "web.jsonl").write_text(
        "".join(json.dumps({"text": f"web page {i} " * 30}) + "\n" for i in range(80))
    )
    (tmp_path / "books").mkdir()
    for i in range(5):
        (tmp_path / "books" / f"{i}.txt").write_text(f"chapter {i}. " * 300)
    text = (SPECS / "tiny.yaml").read_text()
    text = text.replace(
        "  corpus: builtin:pydoc",
        "  sources:\n    - {path: web.jsonl, weight: 3}\n    - {path: books, weight: 1}",
    )
    spec = tmp_path / "blend.yaml"
    spec.write_text(text)
    return spec


def test_prepare_then_inspect(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    spec = _spec(tmp_path)
    first = CliRunner().invoke(main, ["data", "prepare", str(spec), "--json"])
    assert first.exit_code == 0, first.output
    sources = json.loads(first.stdout)["sources"]
    assert [Path(s["source"]).name for s in sources] == ["web.jsonl", "books"]
    assert all(s["tokenized_now"] == s["tokens"] > 0 and s["tokens_per_s"] > 0 for s in sources)
    again = json.loads(CliRunner().invoke(main, ["data", "prepare", str(spec), "--json"]).stdout)["sources"]
    assert [s["tokenized_now"] for s in again] == [0, 0] and [s["shards"] for s in again] == [
        s["shards"] for s in sources
    ]
    shown = CliRunner().invoke(main, ["data", "inspect", str(spec), "--json", "--samples", "4"])
    assert shown.exit_code == 0, shown.output
    (info,) = json.loads(shown.stdout)["data"]
    assert [round(s["weight"], 2) for s in info["sources"]] == [0.75, 0.25]
    assert [s["tokens"] for s in info["sources"]] == [s["tokens"] for s in sources]
    assert len(info["samples"]) == 4 and all(s["text"] for s in info["samples"])
    text = CliRunner().invoke(main, ["data", "inspect", str(spec)])
    assert text.exit_code == 0 and "blend share 0.75" in text.output and "epoch" in text.output


def test_a_bad_source_exits_2_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    spec = _spec(tmp_path)
    (tmp_path / "web.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    result = CliRunner().invoke(main, ["data", "prepare", str(spec)])
    assert (
        result.exit_code == 2
        and "line 2 has no 'text' field" in result.output
        and "text_field" in result.output
    )
