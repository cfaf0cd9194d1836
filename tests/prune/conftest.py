from __future__ import annotations

import pytest
import torch

from .tiny import tiny_model


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores are shared with other test runs: one thread each, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    """A tiny Qwen2 with tied embeddings (GQA, decoupled head_dim): the importance tests' model."""
    return tiny_model("qwen2", tied=True)
