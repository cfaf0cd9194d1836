"""Structured pruning: the index bookkeeping of every axis, checked against an independent construction."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from ablate.errors import PruneError
from ablate.models.arch import count_parameters, embeddings_tied, pruned_config, shape_of, skip_layers
from ablate.models.tokenizer import byte_tokenizer
from ablate.prune.activation import estimate_importance
from ablate.prune.apply import prune_model, save_pruned, top_k
from ablate.prune.importance import baseline_importance
from ablate.prune.scores import ImportanceScores

from .tiny import VARIANTS, logits, tiny_model, token_batch

IDS = token_batch()


def activation_scores(model) -> ImportanceScores:
    return estimate_importance(model, token_batch(6, 24, seed=7), batch_size=3)


def full_target(model) -> dict[str, int]:
    shape = shape_of(model.config)
    return {
        k: shape[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    }


@pytest.mark.parametrize("family,tied", VARIANTS)
def test_pruning_to_own_shape_is_the_identity(family, tied):
    model = tiny_model(family, tied)
    pruned = prune_model(model, activation_scores(model), full_target(model))
    before, after = model.state_dict(), pruned.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
        assert before[key].data_ptr() != after[key].data_ptr(), f"{key} shares storage with the teacher"
    assert torch.allclose(logits(model, IDS), logits(pruned, IDS), atol=1e-6, rtol=0)
    assert embeddings_tied(pruned) == tied
    assert type(pruned) is type(model)


@pytest.mark.parametrize("family,tied", VARIANTS)
def test_removing_ffn_neurons_equals_zeroing_their_down_proj_columns(family, tied):
    model = tiny_model(family, tied)
    scores = activation_scores(model)
    pruned = prune_model(model, scores, {"intermediate_size": 40})
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(reference.model.layers):
            kept = pruned.ablate_kept.mlp[i]
            assert torch.equal(kept, top_k(scores.mlp[i], 40))
            dropped = torch.ones(64, dtype=torch.bool)
            dropped[kept] = False
            assert int(dropped.sum()) == 24
            layer.mlp.down_proj.weight[:, dropped] = 0
    assert torch.allclose(logits(pruned, IDS), logits(reference, IDS), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(pruned, IDS), logits(model, IDS), atol=1e-3)


@pytest.mark.parametrize("family,tied", VARIANTS)
def test_removing_query_heads_equals_zeroing_their_o_proj_input(family, tied):
    model = tiny_model(family, tied)
    scores = activation_scores(model)
    pruned = prune_model(model, scores, {"num_attention_heads": 4})
    reference = copy.deepcopy(model)
    hd = 12
    with torch.no_grad():
        for i, layer in enumerate(reference.model.layers):
            kept = pruned.ablate_kept.heads[i]
            # two of three query heads kept in each of the two KV groups, the best of each group
            assert [int((kept // 3 == g).sum()) for g in range(2)] == [2, 2]
            for g in range(2):
                group = scores.heads[i, 3 * g : 3 * g + 3]
                assert set((kept[kept // 3 == g] - 3 * g).tolist()) == set(top_k(group, 2).tolist())
            for h in set(range(6)) - set(kept.tolist()):
                layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
    assert pruned.config.num_attention_heads == 4 and pruned.config.num_key_value_heads == 2
    assert pruned.model.layers[0].self_attn.q_proj.weight.shape == (4 * hd, 48)
    assert torch.allclose(logits(pruned, IDS), logits(reference, IDS), atol=1e-5, rtol=1e-5)


def drop_layers(model, dropped: list[int]):
    """An independent depth prune: delete the modules and fix the count."""
    ref = copy.deepcopy(model)
    ref.model.layers = torch.nn.ModuleList(m for i, m in enumerate(ref.model.layers) if i not in dropped)
    ref.config.num_hidden_layers = len(ref.model.layers)
    if isinstance(getattr(ref.config, "layer_types", None), list):
        ref.config.layer_types = [t for i, t in enumerate(ref.config.layer_types) if i not in dropped]
    return ref


@pytest.mark.parametrize("family,tied", VARIANTS)
def test_depth_pruning_drops_exactly_the_chosen_layers(family, tied):
    model = tiny_model(family, tied)
    scores = activation_scores(model)
    pruned = prune_model(model, scores, {"num_hidden_layers": 2})
    kept = pruned.ablate_kept.layers
    assert kept == sorted(top_k(scores.depth, 2).tolist())
    dropped = [i for i in range(4) if i not in kept]
    expected = logits(drop_layers(model, dropped), IDS)
    assert torch.allclose(logits(pruned, IDS), expected, atol=1e-5, rtol=1e-5)
    with skip_layers(model, dropped):  # the skip used by lm_loss / contiguous depth scoring agrees
        assert torch.allclose(logits(model, IDS), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(  # renumbered: new layer 1 is old layer kept[1]
        pruned.model.layers[1].mlp.up_proj.weight, model.model.layers[kept[1]].mlp.up_proj.weight
    )
    assert len(pruned.config.layer_types) == 2 if hasattr(pruned.config, "layer_types") else True


def test_contiguous_depth_drops_the_best_block():
    model = tiny_model("mistral")
    scores = estimate_importance(model, token_batch(4, 16), depth_method="contiguous", contiguous_drops=[2])
    assert scores.contiguous[2].shape == (3,)
    pruned = prune_model(model, scores, {"num_hidden_layers": 2})
    start = int(torch.argmin(scores.contiguous[2]))
    assert pruned.ablate_kept.layers == [i for i in range(4) if not start <= i < start + 2]
    scores.contiguous[2] = torch.tensor([5.0, 1.0, 9.0])
    assert prune_model(model, scores, {"num_hidden_layers": 2}).ablate_kept.layers == [0, 3]
    with pytest.raises(PruneError, match="contiguous_drops=1"):
        prune_model(model, scores, {"num_hidden_layers": 3})


def test_hidden_pruning_keeps_the_top_channels_everywhere():
    model = tiny_model("qwen2", tied=False)
    scores = activation_scores(model)
    pruned = prune_model(model, scores, {"hidden_size": 40})
    idx = top_k(scores.hidden, 40)
    assert torch.equal(pruned.ablate_kept.hidden, idx)
    assert torch.equal(pruned.model.embed_tokens.weight, model.model.embed_tokens.weight[:, idx])
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight[:, idx])
    assert torch.equal(pruned.model.norm.weight, model.model.norm.weight[idx])
    a, b = pruned.model.layers[2], model.model.layers[2]
    assert torch.equal(a.self_attn.k_proj.weight, b.self_attn.k_proj.weight[:, idx])
    assert torch.equal(a.self_attn.k_proj.bias, b.self_attn.k_proj.bias)
    assert torch.equal(a.self_attn.o_proj.weight, b.self_attn.o_proj.weight[idx])
    assert torch.equal(a.mlp.down_proj.weight, b.mlp.down_proj.weight[idx])
    assert torch.equal(a.post_attention_layernorm.weight, b.post_attention_layernorm.weight[idx])


def test_llama_saved_as_mistral_gives_identical_logits(tmp_path):
    """hidden 40 with 6 heads: transformers refuses that LlamaConfig, so the child is a Mistral model.
    A Llama model forced to the same shape (config mutated after validation) computes the same logits."""
    model = tiny_model("llama", tied=True)
    pruned = prune_model(model, activation_scores(model), {"hidden_size": 40, "intermediate_size": 48})
    assert pruned.config.model_type == "mistral" and pruned.config.sliding_window is None
    assert pruned.config.head_dim == 12 and pruned.config.tie_word_embeddings
    llama_config = copy.deepcopy(model.config)
    llama_config.hidden_size, llama_config.intermediate_size = 40, 48
    as_llama = LlamaForCausalLM(llama_config).eval()
    as_llama.load_state_dict(pruned.state_dict())
    assert torch.allclose(logits(as_llama, IDS), logits(pruned, IDS), atol=1e-6, rtol=0)
    out = save_pruned(pruned, byte_tokenizer(), tmp_path / "child")
    assert json.loads((out / "config.json").read_text())["model_type"] == "mistral"


@pytest.mark.parametrize("family,tied", VARIANTS)
def test_every_axis_at_once_matches_the_plan(family, tied):
    model = tiny_model(family, tied)
    target = {"hidden_size": 40, "intermediate_size": 48, "num_attention_heads": 4, "num_hidden_layers": 3}
    pruned = prune_model(model, activation_scores(model), target)
    assert {k: shape_of(pruned.config)[k] for k in target} == target
    assert shape_of(pruned.config)["head_dim"] == 12
    assert shape_of(pruned.config)["num_key_value_heads"] == 2
    planned = count_parameters(pruned_config(model.config, target))
    assert sum(p.numel() for p in pruned.parameters()) == planned
    assert embeddings_tied(pruned) == tied
    assert torch.isfinite(logits(pruned, IDS)).all()


def test_saved_checkpoints_load_with_plain_transformers(tmp_path):
    """Every family, tied and untied, pruned on every axis: the directory loads in a fresh interpreter
    that never imports ablate, with the same logits and the planned parameter count."""
    target = {"hidden_size": 40, "intermediate_size": 48, "num_attention_heads": 4, "num_hidden_layers": 3}
    expected = {}
    for family, tied in VARIANTS:
        model = tiny_model(family, tied)
        pruned = prune_model(model, baseline_importance(model, "magnitude"), target)
        save_pruned(pruned, byte_tokenizer(), tmp_path / family)
        expected[family] = (logits(pruned, IDS), count_parameters(pruned_config(model.config, target)), tied)
    torch.save(IDS, tmp_path / "ids.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        root = {str(tmp_path)!r}
        ids = torch.load(root + "/ids.pt")
        out = {{}}
        for family in {[f for f, _ in VARIANTS]!r}:
            model = AutoModelForCausalLM.from_pretrained(root + "/" + family).eval()
            tok = AutoTokenizer.from_pretrained(root + "/" + family)
            assert tok("hi", add_special_tokens=False).input_ids == [104, 105]
            with torch.inference_mode():
                logits = model(input_ids=ids).logits
            tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
            out[family] = (logits, sum(p.numel() for p in model.parameters()), tied, type(model).__name__)
        assert not any(name == "ablate" or name.startswith("ablate.") for name in sys.modules)
        torch.save(out, root + "/reloaded.pt")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    reloaded = torch.load(tmp_path / "reloaded.pt")
    for family, (want_logits, planned, tied) in expected.items():
        got_logits, params, got_tied, cls = reloaded[family]
        assert params == planned, family
        assert got_tied == tied, family
        assert torch.allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5), family
        assert cls.lower().startswith(family) or (family == "llama" and cls == "MistralForCausalLM")


def test_pruned_model_does_not_share_or_change_the_teacher():
    model = tiny_model("mistral")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_model(model, activation_scores(model), {"intermediate_size": 32})
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize(
    "target,message",
    [
        ({"hidden_size": 64}, "larger than the teacher"),
        ({"num_attention_heads": 5}, "not a multiple of the 2 KV heads"),
        ({"num_layers": 2}, "unknown axis"),
        ({"intermediate_size": 0}, "positive integer"),
    ],
)
def test_bad_targets_are_refused(target, message):
    model = tiny_model("mistral")
    with pytest.raises(PruneError, match=message):
        prune_model(model, baseline_importance(model, "random"), target)


def test_scores_of_another_model_are_refused():
    small = tiny_model("mistral", layers=3)
    with pytest.raises(PruneError, match="another model shape"):
        prune_model(tiny_model("mistral"), baseline_importance(small, "random"), {"hidden_size": 40})


def test_save_is_atomic(tmp_path, monkeypatch):
    model = tiny_model("mistral")
    pruned = prune_model(model, baseline_importance(model, "random"), {"intermediate_size": 32})
    tokenizer = byte_tokenizer()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", explode)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(pruned, tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither --out nor a temp dir is left behind
    monkeypatch.undo()
    out = save_pruned(pruned, tokenizer, tmp_path / "out")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    with pytest.raises(PruneError, match="not empty"):
        save_pruned(pruned, tokenizer, tmp_path / "out")
    save_pruned(pruned, tokenizer, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_top_k_keeps_original_order_and_breaks_ties_by_index():
    assert top_k(torch.tensor([0.1, 0.9, 0.5, 0.9]), 2).tolist() == [1, 3]
    assert top_k(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]
    assert Path(__file__).name == "test_apply.py"
