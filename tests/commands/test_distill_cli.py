"""`ablate distill` / `ablate correct` end to end on tiny-mistral (in-process, small budgets)."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from ablate.cli import main
from ablate.models.registry import load_model
from ablate.prune.apply import prune_model, save_pruned
from ablate.prune.importance import compute_importance

COMMON = ["--seq-len", "32", "--global-batch", "4", "--micro-batch", "2", "--eval-tokens", "256"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    teacher, tokenizer = load_model("builtin:tiny-mistral")
    pruned = prune_model(
        teacher, compute_importance(teacher, "magnitude"), {"hidden_size": 48, "num_hidden_layers": 3}
    )
    out = tmp_path_factory.mktemp("student") / "model"
    save_pruned(pruned, tokenizer, out, extra={"kept_layers": pruned.ablate_kept.layers})
    return out


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_distill_trains_saves_and_resumes(tmp_path, student_dir):
    args = ["distill", "--teacher", "builtin:tiny-mistral", "--student", student_dir, "--tokens", "1k", *COMMON,
            "--lr", "1e-3", "--out", tmp_path / "run", "--json"]  # fmt: skip
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    info = json.loads(first.stdout)
    assert info["result"]["steps"] == 8 and info["result"]["tokens"] == 8 * 4 * 32  # ceil(1000 / 128) steps
    assert info["result"]["tokens_budget"] == 1000 and info["result"]["resumed_from_step"] is None
    assert info["after"]["kl_to_teacher"] < info["before"]["kl_to_teacher"]
    model = AutoModelForCausalLM.from_pretrained(info["out"])  # plain transformers, no ablate code
    assert model.config.hidden_size == 48 and (tmp_path / "run" / "model" / "ablate-prune.json").is_file()

    again = invoke(*args)
    assert again.exit_code == 0, again.output
    info2 = json.loads(again.stdout)
    assert info2["result"]["resumed_from_step"] == 8 and info2["after"] == info["after"]

    human = invoke(*args[:-1])
    assert human.exit_code == 0 and "8 steps, 1024 tokens (budget 1000)" in human.output


def test_intermediate_loss_uses_the_kept_layers(tmp_path, student_dir):
    result = invoke(
        "distill", "--teacher", "builtin:tiny-mistral", "--student", student_dir, "--tokens", "256", *COMMON,
        "--loss", "kld+intermediate", "--out", tmp_path / "run", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["result"]["steps"] == 2


def test_correct_fine_tunes_the_teacher(tmp_path):
    result = invoke(
        "correct", "--teacher", "builtin:tiny-mistral", "--tokens", "2k", *COMMON, "--lr", "3e-3",
        "--warmup-steps", "2", "--out", tmp_path / "corr", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["config"]["loss"] == "ce" and info["result"]["steps"] == 16
    assert info["after"]["perplexity"] < info["before"]["perplexity"]
    assert (tmp_path / "corr" / "model" / "model.safetensors").is_file()


def test_bad_inputs_are_clear_errors(tmp_path, student_dir):
    base = ["distill", "--teacher", "builtin:tiny-mistral", "--student", student_dir, *COMMON]
    small = invoke(*base, "--tokens", "100", "--out", tmp_path / "a")
    assert small.exit_code == 2 and "smaller than one optimizer step" in small.output
    assert not (tmp_path / "a").exists()  # refused before anything was loaded or written

    bad_map = invoke(*base, "--tokens", "1k", "--loss", "kld+intermediate", "--intermediate-layers", "0-1",
                     "--out", tmp_path / "b")  # fmt: skip
    assert bad_map.exit_code == 2 and "must look like 0:0,1:2" in bad_map.output

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "something").write_text("x")
    busy = invoke(*base, "--tokens", "1k", "--out", tmp_path / "c")
    assert busy.exit_code == 2 and "not empty and holds no ablate training run" in busy.output

    # A student with another vocabulary is not a child of this teacher.
    teacher, tokenizer = load_model("builtin:tiny-mistral")
    other_config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "vocab_size": 300})
    other = AutoModelForCausalLM.from_config(other_config)
    save_pruned(other, tokenizer, tmp_path / "other")
    vocab = invoke(
        *base[:3], "--student", tmp_path / "other", *COMMON, "--tokens", "1k", "--out", tmp_path / "d"
    )
    assert vocab.exit_code == 2, vocab.output
    assert "vocabulary (300 logits) differs from the teacher's (260)" in vocab.output

    explode = invoke(*base, "--tokens", "4k", "--lr", "1e20", "--grad-clip", "1e9", "--checkpoint-every", "1",
                     "--out", tmp_path / "e")  # fmt: skip
    assert explode.exit_code == 2, explode.output
    assert "training diverged at step" in explode.output and "last good state" in explode.output
    assert (tmp_path / "e" / "train" / "checkpoint.pt").is_file()
