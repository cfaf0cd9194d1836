"""The base spec and the `problems` fixture of the spec tests (`write` is in tests/conftest.py)."""

import pytest

from ablate.errors import SpecError
from ablate.spec.validate import load_spec

BASE = """\
name: t
teacher:
  model: builtin:tiny-mistral
data: {seq_len: 64, eval_tokens: 2k}
targets:
  width: {hidden_size: 48, intermediate_size: 96}
  depth: {num_hidden_layers: 2}
distill:
  loss: kld
  tokens: 2k
  global_batch: 8
  micro_batch: 4
sweep:
  grid:
    target: [width, depth]
    distill.loss: [kld, ce]
"""


@pytest.fixture
def problems(write):
    """Validate a spec text and return its problems (fails the test if it is valid)."""

    def _problems(text: str) -> list[str]:
        path = write(text)
        with pytest.raises(SpecError) as info:
            load_spec(path)
        return info.value.problems

    return _problems
