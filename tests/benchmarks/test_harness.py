"""lm-eval through ablate: the same numbers as lm-eval's own CLI, the shipped task, and clear refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ablate.benchmarks import make_pydoc_cloze
from ablate.benchmarks.harness import run_benchmarks
from ablate.benchmarks.tasks_index import SHIPPED_TASKS, manager_for, resolve, task_manager
from ablate.errors import SpecError

TASK = SHIPPED_TASKS / "pydoc_cloze"


def test_shipped_task_is_what_its_generator_makes():
    rows = make_pydoc_cloze.items(make_pydoc_cloze.held_out_texts())
    shipped = [json.loads(line) for line in (TASK / "pydoc_cloze.jsonl").read_text().splitlines()]
    assert rows == shipped
    assert len(shipped) > 100
    for row in shipped:
        assert len(set(row["choices"])) == 4 and 0 <= row["label"] < 4


def test_unknown_task_names_close_matches():
    with pytest.raises(SpecError, match=r"eval.tasks: unknown lm-eval task 'pydoc_clze'.*pydoc_cloze"):
        resolve(["pydoc_clze"])


def test_hub_task_while_offline_names_task_and_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    monkeypatch.setattr(datasets.config, "HF_CACHE_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(
        SpecError, match=r"task 'arc_easy' needs the Hugging Face dataset allenai/ai2_arc.*offline"
    ):
        resolve(["arc_easy"])


def test_folder_of_tasks_and_bad_folder(tmp_path):
    folder = tmp_path / "mytasks"
    shutil.copytree(TASK, folder)
    text = (folder / "pydoc_cloze.yaml").read_text().replace("task: pydoc_cloze", "task: my_cloze")
    (folder / "pydoc_cloze.yaml").write_text(text)
    tasks = resolve([str(folder), "pydoc_cloze"])
    assert tasks.names == ("my_cloze", "pydoc_cloze")
    assert tasks.include_paths == (str(folder.resolve()),)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="defines no lm-eval task"):
        resolve([str(tmp_path / "empty")])


def test_local_tasks_skip_lm_evals_index_and_resolve_to_the_same_entry(tmp_path):
    folder = tmp_path / "mytasks"
    shutil.copytree(TASK, folder)
    full = task_manager((str(folder),))
    local = manager_for(("pydoc_cloze",), (str(folder),))
    assert (
        "pydoc_cloze" in local.all_tasks and "hellaswag" not in local.all_tasks
    )  # lm-eval's own: not indexed
    assert local.task_index["pydoc_cloze"].yaml_path == full.task_index["pydoc_cloze"].yaml_path
    # a name only lm-eval defines, or one of them among local ones: the full index
    assert manager_for(("hellaswag",)) is task_manager(())
    assert manager_for(("pydoc_cloze", "hellaswag"), (str(folder),)) is full


@pytest.mark.slow
def test_in_memory_run_equals_lm_eval_cli(tmp_path):
    """Same saved model, same task and limit: every metric, its stderr and each choice's log-likelihood
    equal lm-eval's CLI to 1e-6 (ours loads the shipped task from its own index, the CLI from lm-eval's
    whole one)."""
    from ablate.models.registry import load_model

    model, tokenizer = load_model("builtin:tiny-mistral")
    model = model.float()
    saved = tmp_path / "model"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    tasks = resolve(["pydoc_cloze"])
    ours = run_benchmarks(model, tokenizer, tasks, limit=24, batch_size=4, keep_samples=True)

    out = tmp_path / "cli"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
         "--model_args", f"pretrained={saved},dtype=float32", "--tasks", "pydoc_cloze",
         "--include_path", str(SHIPPED_TASKS), "--limit", "24", "--batch_size", "4", "--device", "cpu",
         "--output_path", str(out), "--log_samples"],
        check=True, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    result_file = next(out.rglob("results_*.json"))
    cli = json.loads(result_file.read_text())["results"]["pydoc_cloze"]
    for metric, value in ours["metrics"]["pydoc_cloze"].items():
        assert value == pytest.approx(cli[f"{metric},none"], abs=1e-6), metric
    samples_file = next(out.rglob("samples_pydoc_cloze_*.jsonl"))
    cli_ll = [
        [float(r[0][0]) for r in json.loads(line)["resps"]] for line in samples_file.read_text().splitlines()
    ]
    our_ll = [[float(r[0][0]) for r in s["resps"]] for s in ours["samples"]["pydoc_cloze"]]
    assert len(our_ll) == 24
    torch.testing.assert_close(
        torch.tensor(our_ll, dtype=torch.float64),
        torch.tensor(cli_ll, dtype=torch.float64),
        rtol=0,
        atol=1e-6,
    )


def _spec(tmp_path, eval_line: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: b\nteacher: {model: builtin:tiny-mistral}\ntargets: {w: {hidden_size: 48}}\n"
        f"distill: {{tokens: 2k, global_batch: 8, micro_batch: 4}}\ndata: {{seq_len: 64}}\n{eval_line}\n"
    )
    return path


@pytest.mark.parametrize(
    ("eval_line", "message"),
    [
        (
            "eval: {tasks: [pydoc_clze]}",
            "spec.yaml:6: eval.tasks: unknown lm-eval task 'pydoc_clze'; did you mean pydoc_cloze?",
        ),
        (
            "eval: {tasks: [pydoc_cloze], limit: 0}",
            "spec.yaml:6: eval.limit: expected a whole number of documents",
        ),
        (
            "eval: {tasks: [pydoc_cloze], limit: 2.5}",
            "spec.yaml:6: eval.limit: expected a whole number of documents",
        ),
        ("eval: {tasks: [arc_easy]}", "task 'arc_easy' needs the Hugging Face dataset allenai/ai2_arc"),
    ],
)
def test_validate_refuses_bad_benchmarks_with_exit_2(tmp_path, monkeypatch, eval_line, message):
    from click.testing import CliRunner

    from ablate.cli import main

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    monkeypatch.setattr(datasets.config, "HF_CACHE_HOME", str(tmp_path / "empty-home"))
    result = CliRunner().invoke(main, ["validate", str(_spec(tmp_path, eval_line))])
    assert result.exit_code == 2
    assert message in result.output


def test_eval_command_runs_tasks_on_the_model_and_refuses_bad_flags(tmp_path):
    from click.testing import CliRunner

    from ablate.cli import main

    runner = CliRunner()
    ok = runner.invoke(
        main,
        [
            "eval",
            "--model",
            "builtin:tiny-mistral",
            "--tokens",
            "1k",
            "--tasks",
            "pydoc_cloze",
            "--limit",
            "4",
            "--json",
        ],
    )
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.output[ok.output.index("{") :])
    assert set(out["benchmarks"]["pydoc_cloze"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    bad = runner.invoke(
        main, ["eval", "--model", "builtin:tiny-mistral", "--tasks", "pydoc_cloze", "--limit", "-1"]
    )
    assert bad.exit_code == 2 and "--limit '-1'" in bad.output
    alone = runner.invoke(main, ["eval", "--model", "builtin:tiny-mistral", "--limit", "4"])
    assert alone.exit_code == 2 and "give --tasks too" in alone.output
