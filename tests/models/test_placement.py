"""A model split over devices by accelerate (here: CPU and disk offload, the same dispatch hooks that
split over GPUs) gives the same importance scores and evaluation as the whole model."""

from __future__ import annotations

import torch

from ablate.evaluate import evaluate
from ablate.models.placement import gpu_count, place
from ablate.models.registry import tiny_mistral_model
from ablate.prune.activation import estimate_importance


def _split_map(model) -> dict[str, str]:
    layers = model.config.num_hidden_layers
    device_map = {
        "model.embed_tokens": "cpu",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    device_map |= {f"model.layers.{i}": ("cpu" if i < layers // 2 else "disk") for i in range(layers)}
    return device_map


def _batches() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (8, 32), generator=gen)


def test_without_gpus_a_model_stays_whole_on_the_cpu():
    model = tiny_mistral_model()
    assert gpu_count() == 0  # this machine; the GPU path is checked by bench/placement_gpu.py
    assert place(model) is model and {p.device.type for p in model.parameters()} == {"cpu"}


def test_importance_and_eval_of_a_split_model_equal_the_whole_models(tmp_path):
    whole = tiny_mistral_model()
    split = place(tiny_mistral_model(), device_map=_split_map(whole), offload_dir=str(tmp_path))
    assert hasattr(split.model.layers[-1], "_hf_hook")  # really dispatched, weights loaded on the fly
    kwargs = dict(batch_agg="l2", seq_agg="mean", depth_method="lm_loss")
    a = estimate_importance(whole, _batches(), **kwargs)
    b = estimate_importance(split, _batches(), **kwargs)
    for name in ("heads", "mlp", "hidden", "depth"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-9), name
    teacher = tiny_mistral_model()
    ea = evaluate(whole, _batches(), teacher=teacher, batch_size=4)
    eb = evaluate(split, _batches(), teacher=teacher, batch_size=4)
    for key, value in ea.items():
        assert abs(eb[key] - value) <= 1e-6 * max(1.0, abs(value)), key
