"""Every class of bad input is reported with file, line, dotted path, and what was expected."""

import re
from pathlib import Path

import pytest

from ablate.errors import SpecError
from ablate.spec.validate import load_spec

from .conftest import BASE

LOCATED = re.compile(r"^.+\.yaml:(\d+): ")
SPECS = sorted(Path(__file__).parents[2].joinpath("specs").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_validates(spec):
    loaded = load_spec(spec)
    assert loaded.trials


def line_of(problem: str) -> int:
    match = LOCATED.match(problem)
    assert match, f"problem has no file:line: {problem}"
    return int(match.group(1))


def test_base_is_valid(write):
    assert len(load_spec(write(BASE)).trials) == 4


def test_unknown_key_with_did_you_mean(problems):
    found = problems(BASE.replace("  loss: kld\n", "  loss: kld\n  temprature: 2.0\n"))
    assert len(found) == 1
    assert "distill.temprature: unknown key 'temprature'" in found[0]
    assert "did you mean 'temperature'?" in found[0]
    assert line_of(found[0]) == 10


def test_wrong_type(problems):
    found = problems(BASE.replace("global_batch: 8", "global_batch: many"))
    assert len(found) == 1 and "distill.global_batch" in found[0]
    assert "got 'many'; expected a valid integer" in found[0]
    assert line_of(found[0]) == 11


@pytest.mark.parametrize("budget", ["0", "-20k"])
def test_negative_or_zero_budget(problems, budget):
    found = problems(BASE.replace("\n  tokens: 2k", f"\n  tokens: {budget}"))
    assert len(found) == 1 and "distill.tokens" in found[0] and "positive" in found[0]
    assert line_of(found[0]) == 10


def test_budget_below_one_step(problems):
    found = problems(BASE.replace("\n  tokens: 2k", "\n  tokens: 100"))
    assert "less than one optimizer step" in found[0] and "8 x seq_len 64 = 512" in found[0]


def test_bad_unit(problems):
    found = problems(BASE.replace("\n  tokens: 2k", "\n  tokens: 20q"))
    assert len(found) == 1 and "distill.tokens: unknown unit 'q'" in found[0]


def test_sweep_path_that_does_not_exist(problems):
    found = problems(BASE.replace("distill.loss: [kld, ce]", "distill.los: [kld, ce]"))
    assert len(found) == 1
    assert "sweep.grid.distill.los: sweep path 'distill.los' does not exist" in found[0]
    assert line_of(found[0]) == 16


def test_sweep_value_of_the_wrong_type(problems):
    found = problems(BASE.replace("distill.loss: [kld, ce]", "distill.lr: [1e-4, fast]"))
    assert len(found) == 1 and "sweep.grid.distill.lr[1]" in found[0] and "'fast'" in found[0]
    assert line_of(found[0]) == 16


def test_sweep_value_not_allowed(problems):
    found = problems(BASE.replace("[kld, ce]", "[kld, mse]"))
    assert "sweep.grid.distill.loss[1]" in found[0] and "expected one of 'kld', 'ce'" in found[0]


def test_exclude_that_matches_nothing(problems):
    found = problems(BASE + "  exclude: [{target: width, distill.loss: scratch}]\n")
    assert len(found) == 1 and "sweep.exclude[0]" in found[0] and "matches no trial" in found[0]
    assert line_of(found[0]) == 17


def test_exclude_removes_trials(write):
    loaded = load_spec(write(BASE + "  exclude: [{target: depth, distill.loss: ce}]\n"))
    assert len(loaded.trials) == 3
    assert {"target": "depth", "distill.loss": "ce", "seed": 0} not in [t.overrides for t in loaded.trials]


def test_empty_grid_and_empty_axis(problems):
    found = problems(
        BASE.replace("    target: [width, depth]\n    distill.loss: [kld, ce]\n", "    target: []\n")
    )
    assert "sweep.grid.target: empty grid axis" in found[0]
    found = problems(
        BASE.replace("  grid:\n    target: [width, depth]\n    distill.loss: [kld, ce]\n", "  grid: {}\n")
    )
    assert "sweep.grid: empty grid" in found[0]


def test_duplicate_target_name(problems):
    found = problems(
        BASE.replace(
            "  depth: {num_hidden_layers: 2}\n",
            "  depth: {num_hidden_layers: 2}\n  width: {hidden_size: 32}\n",
        )
    )
    assert len(found) == 1 and "targets.width: duplicate key 'width' (first defined on line 6" in found[0]
    assert line_of(found[0]) == 8


def test_target_larger_than_teacher(problems):
    found = problems(BASE.replace("hidden_size: 48", "hidden_size: 4096"))
    assert len(found) == 1
    assert "targets.width.hidden_size: hidden_size=4096 is larger than the teacher's 64" in found[0]
    assert line_of(found[0]) == 6


def test_heads_not_a_multiple_of_kv_heads(problems):
    found = problems(BASE.replace("num_hidden_layers: 2}", "num_hidden_layers: 2, num_attention_heads: 3}"))
    assert (
        len(found) == 1
        and "targets.depth.num_attention_heads" in found[0]
        and "multiple of the 2 KV heads" in found[0]
    )


def test_extends_merges_and_reports_the_file_that_set_a_value(write, tmp_path):
    write(BASE, "base.yaml")
    child = write("extends: base.yaml\nname: child\ndistill:\n  lr: 3e-4\n  warmup_steps: -1\n", "child.yaml")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    [problem] = info.value.problems
    assert problem.startswith(f"{child}:5: distill.warmup_steps")
    write("extends: base.yaml\nname: child\ndistill: {lr: 3e-4}\n", "ok.yaml")
    loaded = load_spec(tmp_path / "ok.yaml")
    assert (
        loaded.spec.distill.lr == 3e-4 and loaded.spec.distill.tokens == 2000 and loaded.spec.name == "child"
    )


def test_extends_cycle(write):
    write("extends: b.yaml\nname: a\n", "a.yaml")
    b = write("extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(SpecError) as info:
        load_spec(b)
    assert "extends cycle: b.yaml -> a.yaml -> b.yaml" in info.value.problems[0]


def test_missing_file(tmp_path, write):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert "nope.yaml: file not found" in info.value.problems[0]
    with pytest.raises(SpecError) as info:
        load_spec(write("extends: gone.yaml\nname: x\n"))
    assert ":1: extends: file 'gone.yaml' not found" in info.value.problems[0]


def test_yaml_syntax_error(problems):
    found = problems(BASE.replace("  loss: kld\n", "  loss: [kld\n"))
    assert len(found) == 1 and "YAML syntax error" in found[0]
    assert line_of(found[0]) > 0


def test_object_constructing_tag_is_refused_not_run(problems, tmp_path):
    marker = tmp_path / "pwned"
    found = problems(BASE.replace("name: t", f"name: !!python/object/apply:os.system ['touch {marker}']"))
    assert not marker.exists()
    assert (
        len(found) == 1
        and "name: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in found[0]
    )
    assert line_of(found[0]) == 1
    found = problems(BASE.replace("loss: kld", "loss: !custom kld"))
    assert "YAML tag '!custom' is not allowed" in found[0]


def test_every_problem_is_reported_at_once(problems):
    text = (
        BASE.replace("global_batch: 8", "global_batch: many")
        .replace("loss: kld\n", "loss: kld\n  temprature: 2\n")
        .replace("hidden_size: 48", "hidden_size: 4096")
        .replace("distill.loss: [kld, ce]", "distill.los: [kld, ce]")
    )
    found = problems(text)
    assert len(found) == 3, found  # target check needs a valid schema; the other three are independent
    assert any("temprature" in p for p in found) and any("global_batch" in p for p in found)
    assert any("distill.los" in p for p in found)


def test_relation_between_swept_fields_is_checked_per_trial(problems):
    found = problems(BASE.replace("distill.loss: [kld, ce]", "distill.micro_batch: [4, 3]"))
    [problem] = found
    assert "sweep.grid: global_batch (8) must be a multiple of micro_batch (3)" in problem
    assert "[in the trial {'distill.micro_batch': 3}]" in problem
    assert line_of(problem) == 14


def test_relation_between_two_swept_fields_names_the_trial(problems):
    found = problems(
        BASE.replace(
            "distill.loss: [kld, ce]", "distill.micro_batch: [4, 3]\n    distill.global_batch: [8, 9]"
        )
    )
    assert any("must be a multiple of micro_batch (3)" in p and "[in the trial" in p for p in found), found


def test_unknown_builtin_teacher(problems):
    found = problems(BASE.replace("builtin:tiny-mistral", "builtin:gpt5"))
    assert "teacher.model: unknown built-in model 'builtin:gpt5'" in found[0] and line_of(found[0]) == 3


def test_global_batch_must_divide_over_workers(problems):
    found = problems(BASE + "resources:\n  trial: {cpu: 2, gpu: 0, workers: 3, strategy: ddp}\n")
    assert (
        len(found) == 1
        and "multiple of resources.trial.workers x distill.micro_batch (3 x 4 = 12)" in found[0]
    )


def test_gpus_whole_per_worker_and_single_means_one(problems):
    found = problems(BASE + "resources:\n  trial: {cpu: 2, gpu: 1, workers: 2, strategy: fsdp}\n")
    assert "0.5 per worker (expected a whole number of GPUs per worker)" in found[0]
    found = problems(BASE + "resources:\n  trial: {workers: 2}\n")
    assert "strategy single runs one process" in found[0]


def test_teacher_correction_batch_must_divide_over_workers_too(problems):
    base = BASE.replace(
        "  model: builtin:tiny-mistral\n",
        "  model: builtin:tiny-mistral\n  correction: {tokens: 2k, global_batch: 6, micro_batch: 2}\n",
        1,
    )
    found = problems(base + "resources:\n  trial: {cpu: 2, gpu: 0, workers: 2, strategy: ddp}\n")
    assert len(found) == 1 and "teacher.correction's global batch (6) must be a multiple of" in found[0]
    assert "(2 x 2 = 4)" in found[0]
