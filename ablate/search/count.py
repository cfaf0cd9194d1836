"""Exact parameter counts of every shape of a search space at once, through the plan's own counter.

The parameters of a Llama-layout decoder are a multilinear polynomial in hidden size, FFN size, query
heads and layer count (embedding and head: vocab x hidden; each layer: attention hidden x heads x
head_dim plus hidden x KV x head_dim, MLP 3 x hidden x ffn, norms and biases), with head_dim, KV heads
and vocabulary fixed by the teacher. So the counts of ablate.models.arch.count_parameters (the real
transformers module on the meta device, as `ablate plan` counts) at two values of each axis determine
it exactly: 16 builds of one- and two-layer models, solved in exact rational arithmetic, then checked
against one more build at other values. Every shape is then one numpy expression (no per-shape build).
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import prod

import numpy as np
from transformers import PretrainedConfig

from ablate.errors import ModelError
from ablate.models.arch import count_parameters, pruned_config
from ablate.spec.schema import TARGET_AXES
from ablate.spec.search import DEPTH_AXIS

Exponents = tuple[int, ...]  # one 0/1 exponent per axis of TARGET_AXES


class ParamPolynomial:
    """params(shape) = sum of coefficient x product of the axes whose exponent is 1."""

    def __init__(self, coefficients: dict[Exponents, int]):
        self.coefficients = {e: c for e, c in coefficients.items() if c}

    def __call__(self, shape: dict[str, int]) -> int:
        return sum(c * prod(shape[a] for a, e in zip(TARGET_AXES, exps, strict=True) if e)
                   for exps, c in self.coefficients.items())  # fmt: skip

    def grid(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Counts over the outer product of each axis's values (one numpy dimension per axis)."""
        ndim = len(TARGET_AXES)
        axes = [
            np.asarray(values[a], dtype=np.int64).reshape([-1 if i == j else 1 for j in range(ndim)])
            for i, a in enumerate(TARGET_AXES)
        ]
        largest = [int(np.max(np.abs(x))) for x in axes]
        bound = sum(abs(c) * prod(m for m, e in zip(largest, exps, strict=True) if e)
                    for exps, c in self.coefficients.items())  # fmt: skip
        dtype = np.int64 if bound < 2**62 else object  # exact either way; object only past int64
        total = np.zeros([len(values[a]) for a in TARGET_AXES], dtype=dtype)
        for exps, c in self.coefficients.items():
            term: np.ndarray | int = c
            for x, e in zip(axes, exps, strict=True):
                if e:
                    term = term * (x.astype(dtype) if dtype is object else x)
            total = total + term
        return total


def _count(config: PretrainedConfig, shape: dict[str, int]) -> int:
    return count_parameters(pruned_config(config, shape))


def param_polynomial(config: PretrainedConfig, choices: dict[str, tuple[int, ...]]) -> ParamPolynomial:
    """The exact count polynomial of `config`'s family over the axes' `choices` (an axis with one choice
    enters as a constant). Raises ModelError if the family's count is not multilinear (never for the
    supported families; checked at a shape that no interpolation node uses)."""
    layers = config.num_hidden_layers
    nodes: dict[str, tuple[int, ...]] = {}
    for axis in TARGET_AXES:
        vals = choices[axis]
        if axis == DEPTH_AXIS:
            nodes[axis] = (1, 2) if layers >= 2 and len(vals) > 1 else (vals[0],)
        else:
            nodes[axis] = (min(vals), max(vals)) if len(vals) > 1 else (vals[0],)
    table: dict[Exponents, Fraction] = {}
    for index in itertools.product(*(range(len(nodes[a])) for a in TARGET_AXES)):
        shape = {a: nodes[a][i] for a, i in zip(TARGET_AXES, index, strict=True)}
        table[index] = Fraction(_count(config, shape))
    # Per axis, values at two nodes -> coefficients of x^0 and x^1 (exact: Fractions).
    for pos, axis in enumerate(TARGET_AXES):
        if len(nodes[axis]) == 1:
            continue
        x0, x1 = nodes[axis]
        solved: dict[Exponents, Fraction] = {}
        for index, v0 in table.items():
            if index[pos] == 1:
                continue
            other = (*index[:pos], 1, *index[pos + 1 :])
            v1 = table[other]
            solved[index] = (x1 * v0 - x0 * v1) / (x1 - x0)
            solved[other] = (v1 - v0) / (x1 - x0)
        table = solved
    if any(c.denominator != 1 for c in table.values()):
        raise ModelError(_not_multilinear(config))
    poly = ParamPolynomial({e: int(c) for e, c in table.items()})
    probe = {a: _probe(a, choices[a], nodes[a], layers) for a in TARGET_AXES}
    if poly(probe) != _count(config, probe):
        raise ModelError(_not_multilinear(config))
    return poly


def _probe(axis: str, vals: tuple[int, ...], nodes: tuple[int, ...], layers: int) -> int:
    """A value of the axis other than its interpolation nodes where there is one."""
    if len(nodes) == 1:
        return nodes[0]
    if axis == DEPTH_AXIS:
        return 3 if layers >= 3 else nodes[-1]
    inner = [v for v in vals if v not in nodes]
    return inner[len(inner) // 2] if inner else nodes[-1]


def _not_multilinear(config: PretrainedConfig) -> str:
    return (
        f"the parameter count of a {config.model_type} model is not a multilinear function of its widths "
        "and depth, which search enumeration relies on; give the space explicit values and plan targets instead"
    )
