from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores are shared with other test runs: one thread each, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Token caches and shards in the test's own folder, never the user's ~/.cache/ablate."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tok():
    """The built-in byte tokenizer: no download, every byte a token."""
    from ablate.models.tokenizer import byte_tokenizer

    return byte_tokenizer()
