"""Enumeration is complete and exact: every shape of the space, counted by the plan's own counter (the
real module on the meta device), checked one by one against the fast polynomial."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from ablate.errors import SpecError
from ablate.models.arch import count_parameters, pruned_config
from ablate.models.registry import load_config
from ablate.plan.memory import GIB
from ablate.search.enumerate import enumerate_candidates, enumerate_space
from ablate.search.space import candidate_name
from ablate.spec.schema import TARGET_AXES
from ablate.spec.search import Search

ROOT = Path(__file__).parents[2]
TINY = load_config("builtin:tiny-mistral")
TINY_SPACE = {
    "max_width_pruning": 0.75,
    "max_depth_pruning": 0.5,
    "hidden_size": {"divisor": 8},
    "intermediate_size": {"divisor": 16},
    "num_hidden_layers": {"divisor": 1},
}


def search(budget: dict, space: dict | None = None) -> Search:
    return Search.model_validate(
        {"budget": budget, "space": TINY_SPACE if space is None else space, "retrain": {"tokens": "1k"}}
    )


def brute_force(config, choices: dict[str, list[int]]) -> list[tuple[int, dict]]:
    """Every shape built and counted on the meta device, largest first (ties: wider first, axis by axis)."""
    found = []
    for values in itertools.product(*(choices[a] for a in TARGET_AXES)):
        shape = dict(zip(TARGET_AXES, values, strict=True))
        found.append((count_parameters(pruned_config(config, shape)), shape))
    found.sort(key=lambda f: (-f[0], *(-f[1][a] for a in TARGET_AXES)))
    return found


def kept(counted: list[tuple[int, dict]], keep) -> list[tuple[str, int]]:
    return [(candidate_name(shape), params) for params, shape in counted if keep(shape, params)]


def test_tiny_space_matches_brute_force_exactly():
    s = search({"params": "100k", "tolerance": 0.2})
    found = enumerate_space(TINY, s)
    choices = {a: list(c.values) for a, c in found.axes.items()}
    assert choices == {
        "hidden_size": [24, 32, 40, 48, 56, 64],
        "intermediate_size": [48, 64, 80, 96, 112, 128],
        "num_attention_heads": [2, 4],
        "num_hidden_layers": [3, 4],
    }
    counted = brute_force(TINY, choices)
    expected = kept(counted, lambda _, p: 80_000 <= p <= 100_000)
    assert [(c.name, c.params) for c in found.candidates] == expected
    assert found.count == len(expected) == 26 and found.space_size == 144
    everything = kept(counted, lambda _, p: p <= 100_000)
    assert found.under_budget == len(everything)
    # A candidate's target holds only the axes it prunes, as a spec target does.
    assert all(
        set(c.target) == {a for a in TARGET_AXES if c.shape[a] != getattr(TINY, a)} for c in found.candidates
    )


def test_explicit_values_skip_min_and_memory_match_brute_force():
    space = {
        "skip": ["intermediate_size"],
        "hidden_size": {"values": [64, 40, 24, 40]},
        "num_attention_heads": {"values": [2, 4]},
        "num_hidden_layers": {"min": 2, "divisor": 1},
    }
    budget = {"params": "150k", "tolerance": 0.6, "memory_gib": 2.2e-4, "seq_len": 16, "batch": 2}
    found = enumerate_space(TINY, search(budget, space))
    choices = {a: list(c.values) for a, c in found.axes.items()}
    assert choices == {
        "hidden_size": [24, 40, 64],
        "intermediate_size": [128],
        "num_attention_heads": [2, 4],
        "num_hidden_layers": [2, 3, 4],
    }

    def keep(shape: dict, params: int) -> bool:
        kv_cache = 2 * 2 * shape["num_hidden_layers"] * 2 * 24 * 16 * 2  # K and V, bf16, kv 2, head_dim 24
        return 60_000 <= params <= 150_000 and 2 * params + kv_cache <= 2.2e-4 * GIB

    counted = brute_force(TINY, choices)
    expected = kept(counted, keep)
    assert 0 < len(expected) < len(kept(counted, lambda _, p: 60_000 <= p <= 150_000))
    assert [(c.name, c.params) for c in enumerate_candidates(TINY, search(budget, space))] == expected


def test_values_the_teacher_cannot_take_are_refused_naming_the_field():
    with pytest.raises(SpecError) as info:
        enumerate_space(TINY, search({"params": "100k"}, {"num_attention_heads": {"values": [3]}}))
    assert "search.space.num_attention_heads.values: 3 is not a multiple of the teacher's 2 KV heads" in str(
        info.value
    )


def test_mistral_nemo_12b_at_model_optimizer_defaults_under_10_s():
    """Model Optimizer's rule and defaults: 8 x 12 x 2 x 4 = 768 shapes, 414 at or under 8B."""
    config = load_config("x", ROOT / "specs/configs/mistral-nemo-12b.json")
    count_parameters(config)  # the modelling code imported, as `ablate plan` has by then
    started = time.perf_counter()
    found = enumerate_space(config, search({"params": "8B", "tolerance": 1}, {}))
    seconds = time.perf_counter() - started
    assert seconds < 10
    assert found.space_size == 768 and found.under_budget == found.count == 414
    assert [c.values for c in found.axes.values()] == [
        tuple(range(3328, 5121, 256)),
        tuple(range(8704, 14337, 512)),
        (24, 32),
        (34, 36, 38, 40),
    ]
    assert found.teacher_params == count_parameters(config) == 12_247_782_400
    for c in (found.candidates[0], found.candidates[len(found.candidates) // 2], found.candidates[-1]):
        assert count_parameters(pruned_config(config, c.shape)) == c.params
    assert found.candidates[0].name == "h4864-f8704-a32-l38"
