"""Enumerate Mistral NeMo 12B's search space to an 8B budget at Model Optimizer's defaults (divisors
hidden 256 / FFN 512 / layers 2, at most 40% of width and 20% of depth cut), from the shipped config
with no weights, and print JSON: the space, the candidate counts and the seconds it took.

    PYTHONPATH=. python bench/search_enumerate.py

`seconds` is the enumeration itself (the count polynomial's 17 meta-device builds and the numpy
grid), once transformers' modelling code is imported, as it is by the time `ablate plan` gets there;
`cold_seconds` includes that import; `seconds_per_shape_meta` is what building every shape on the meta
device would cost instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]


def main() -> None:
    started = time.perf_counter()
    from ablate.models.arch import count_parameters, pruned_config
    from ablate.models.registry import load_config
    from ablate.search.enumerate import enumerate_space
    from ablate.spec.search import Search

    config = load_config("mistralai/Mistral-Nemo-Base-2407", ROOT / "specs/configs/mistral-nemo-12b.json")
    modelopt = Search.model_validate(
        {"budget": {"params": "8B", "tolerance": 1}, "retrain": {"tokens": "2B"}}
    )
    cold = enumerate_space(config, modelopt)
    cold_seconds = time.perf_counter() - started
    found = enumerate_space(config, modelopt)
    ours = enumerate_space(
        config, Search.model_validate({"budget": {"params": "8B"}, "retrain": {"tokens": "2B"}})
    )
    t = time.perf_counter()
    check = [found.candidates[0], found.candidates[-1]]
    exact = all(count_parameters(pruned_config(config, c.shape)) == c.params for c in check)
    per_shape = (time.perf_counter() - t) / len(check)
    print(
        json.dumps(
            {
                "teacher": "Mistral NeMo 12B",
                "teacher_params": found.teacher_params,
                "budget_params": 8_000_000_000,
                "axes": {a: list(c.values) for a, c in found.axes.items()},
                "space_size": found.space_size,
                "under_budget": found.under_budget,
                "candidates_within_5pct": ours.count,
                "largest": found.candidates[0].to_dict(),
                "seconds": round(found.seconds, 3),
                "cold_seconds": round(cold_seconds, 3),
                "cold_enumeration_seconds": round(cold.seconds, 3),
                "seconds_per_shape_meta": round(per_shape, 3),
                "spot_checks_exact": exact,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
