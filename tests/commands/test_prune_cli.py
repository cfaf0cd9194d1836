"""`ablate prune` and `ablate eval` end to end, and every class of bad input: exit 2, one line, nothing at --out."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, GPT2Config

from ablate.cli import main
from ablate.models.registry import load_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*args: str):
    return CliRunner().invoke(main, list(args))


TINY = [
    "--model",
    "builtin:tiny-mistral",
    "--calibration-samples",
    "4",
    "--seq-len",
    "32",
    "--eval-tokens",
    "256",
]


def test_prune_then_eval(tmp_path):
    out = tmp_path / "student"
    target = "hidden_size=48,intermediate_size=96,num_attention_heads=2,num_hidden_layers=3"
    result = run("prune", *TINY, "--target", target, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["params"] == info["planned_params"] < info["teacher_params"]
    assert info["shape"]["num_attention_heads"] == 2 and len(info["kept_layers"]) == 3
    assert info["importance"]["batch_agg"] == "l2" and info["importance"]["seq_agg"] == "mean"
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "ablate-importance.safetensors"} <= files
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == info["params"]

    result = run("eval", "--model", str(out), "--teacher", "builtin:tiny-mistral", "--tokens", "1k", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["tokens"] == 8 * 127 and metrics["perplexity"] > 1
    assert metrics["kl_to_teacher"] > 0 and 0 <= metrics["top1_agreement"] <= 1

    # the saved scores are reusable, and --force replaces the checkpoint
    scores = out / "ablate-importance.safetensors"
    result = run(
        "prune", *TINY, "--target", "intermediate_size=64", "--out", str(out), "--scores", str(scores)
    )
    assert result.exit_code == 2 and "not empty" in result.stderr
    result = run(
        "prune",
        *TINY,
        "--target",
        "intermediate_size=64",
        "--out",
        str(out),
        "--scores",
        str(scores),
        "--force",
    )
    assert result.exit_code == 0, result.output
    assert "-> " in result.stdout and AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 64


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_baselines(tmp_path, method):
    result = run(
        "prune", *TINY, "--target", "hidden_size=40", "--importance", method, "--out", str(tmp_path / "o")
    )
    assert result.exit_code == 0, result.output
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "o").config.hidden_size == 40


@pytest.fixture
def bad_models(tmp_path):
    gpt = tmp_path / "gpt2-model"
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(gpt)
    corrupt = tmp_path / "corrupt-model"
    model, tok = load_model("builtin:tiny-mistral")
    model.save_pretrained(corrupt)
    tok.save_pretrained(corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(b"\x00" * 64 + weights.read_bytes()[64:1000])
    return {"gpt2": str(gpt), "corrupt": str(corrupt)}


@pytest.mark.parametrize(
    "model,target,message",
    [
        ("builtin:tiny-mistral", "hidden_size=128", "hidden_size=128 is larger than the teacher's 64"),
        ("builtin:tiny-mistral", "num_attention_heads=3", "not a multiple of the 2 KV heads"),
        ("builtin:tiny-mistral", "width=3", "unknown target axis 'width'"),
        ("builtin:tiny-mistral", "hidden_size=big", "not a whole number"),
        ("gpt2", "hidden_size=4", "model family 'gpt2' is not supported"),
        ("nobody/missing-model-xyz", "hidden_size=4", "an HF id in the local cache"),
        ("corrupt", "hidden_size=32", "corrupt"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path, monkeypatch, bad_models, model, target, message
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    result = run("prune", "--model", bad_models.get(model, model), "--target", target, "--out", str(out))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() and set(tmp_path.iterdir()) == before


def test_eval_refuses_a_teacher_with_another_tokenizer(tmp_path, monkeypatch):
    from ablate.models.tokenizer import byte_tokenizer

    model, _ = load_model("builtin:tiny-mistral")
    other = byte_tokenizer()
    other.add_tokens(["<extra>"])
    model.save_pretrained(tmp_path / "m")
    other.save_pretrained(tmp_path / "m")
    result = run(
        "eval", "--model", str(tmp_path / "m"), "--teacher", "builtin:tiny-mistral", "--tokens", "256"
    )
    assert result.exit_code == 2 and "different tokenizers" in result.stderr
