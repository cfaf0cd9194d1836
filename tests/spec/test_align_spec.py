"""The align section's bad input, refused at validate time with the field, the value and the fix; and on
the command line, exit 2."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ablate.cli import main
from tests.spec.conftest import BASE

SFT = "    sft: {method: sft, data: builtin:pydoc-instruct, examples: 16, global_batch: 8, micro_batch: 8}\n"


def _align(stages: str, template: str | None = "chatml") -> str:
    head = "align:\n" + (f"  chat_template: {template}\n" if template else "")
    return BASE + head + "  stages:\n" + stages


def test_a_preference_set_without_chosen_and_rejected(problems, tmp_path):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": "a"}) + "\n" for i in range(20)))
    found = problems(_align(SFT + f"    dpo: {{method: dpo, data: '{bad}'}}\n"))
    assert any(
        "align.stages.dpo.data:" in p
        and "no chosen, rejected (method dpo needs prompt, chosen, rejected" in p
        for p in found
    ), found


def test_a_chat_template_for_a_tokenizer_that_has_none(problems):
    found = problems(_align(SFT, template=None))
    assert any(
        "align.chat_template: the tokenizer of builtin:tiny-mistral has no chat template" in p
        and "chatml" in p
        for p in found
    ), found


def test_a_budget_smaller_than_one_step(problems):
    found = problems(
        _align(
            "    sft: {method: sft, data: builtin:pydoc-instruct, examples: 4, global_batch: 8, micro_batch: 8}\n"
        )
    )
    assert any("examples (4) is less than one optimizer step (global_batch 8)" in p for p in found), found
    found = problems(_align("    sft: {method: sft, data: builtin:pydoc-instruct, beta: 0.5}\n"))
    assert any("beta is read only by dpo and ipo" in p for p in found), found


def test_validate_exits_2_on_bad_align_input(write):
    path = write(_align("    sft: {method: sft, data: builtin:nope}\n"))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert "align.stages.sft.data: unknown alignment set 'builtin:nope'" in result.output


def test_a_valid_align_section(write):
    result = CliRunner().invoke(main, ["validate", str(write(_align(SFT)))])
    assert result.exit_code == 0, result.output
