"""Greedy decoding whose time is the model's: a static KV cache, a prefill forward, then one step per token.

Eager `generate` spends milliseconds of Python per token (logits processors, cache bookkeeping, one kernel
launch per op), which on a GPU is more than the weights' traffic of an 8B model (about 3 ms in BF16 on an
H200), so it cannot show what FP8 saves. Here the KV cache is transformers' `StaticCache` (preallocated,
updated in place: fixed shapes and addresses), and the per-token step runs in one of three ways:

- ``eager``: the model's forward, as is (CPU, tests, the reference);
- ``compile``: `torch.compile` of the step (mode "reduce-overhead" on CUDA: inductor kernels replayed as CUDA
  graphs), what transformers does for `cache_implementation="static"`; a 40-layer model takes tens of
  seconds to compile per batch size;
- ``graph``: the eager step captured once into a CUDA graph and replayed (CUDA only); seconds to build.
  `compile_block_regions` (called first, for FP8) compiles the decoder blocks' linear layers and MLPs (no
  cache inside them, so one compiled graph serves all layers): this fuses FP8's per-token activation
  quantisation, which in eager is several small kernels per linear layer.

Prefill and decode are timed apart and reported as trtllm-bench does: time to first token (the prefill of
the whole batch and its first token), time per output token (the mean decode step after the first token)
and output tokens per second (batch x output tokens / total time).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass

import torch
from torch import nn

MODES = ("eager", "compile", "graph")


@dataclass
class DecodeTiming:
    ttft_s: float  # prefill of the batch + its first token
    decode_s: float  # the remaining output_len - 1 steps
    batch_size: int
    output_len: int

    @property
    def tpot_s(self) -> float:
        steps = self.output_len - 1
        return self.decode_s / steps if steps > 0 else 0.0

    @property
    def seconds(self) -> float:
        return self.ttft_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        return self.batch_size * self.output_len / self.seconds if self.seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_kwargs(model: nn.Module) -> tuple[str, str | None]:
    """The cache keyword (transformers >= 5.2x: `cache`; before: `past_key_values`) and the keyword that
    keeps only the last position's logits (`logits_to_keep`, `num_logits_to_keep` before 4.50)."""
    params = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache, keep


def static_cache(model: nn.Module, max_cache_len: int):
    """transformers' StaticCache for `model` (its constructor changed across 4.x and 5.x)."""
    from transformers import StaticCache

    params = inspect.signature(StaticCache.__init__).parameters
    if "max_batch_size" in params or "batch_size" in params:  # 4.x: allocated up front
        raise RuntimeError(
            "this transformers' StaticCache needs the batch size up front; ablate's static decoding needs "
            "transformers >= 4.56 (StaticCache(config=..., max_cache_len=...))"
        )
    return StaticCache(config=model.config, max_cache_len=max_cache_len)


class StaticDecoder:
    """Greedy generation of a fixed batch shape over one StaticCache, reused across calls."""

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        max_len: int,
        mode: str = "eager",
        backend: str = "inductor",
    ):
        """`backend` is torch.compile's in mode "compile" (tests pass "eager": dynamo's whole-graph
        trace without inductor's code generation, which takes minutes on a CPU)."""
        if mode not in MODES:
            raise ValueError(f"decode mode {mode!r} is not one of {', '.join(MODES)}")
        self.model = model
        self.device = next(model.parameters()).device
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError(
                "decode mode 'graph' (CUDA graphs) needs a CUDA device; use 'eager' or 'compile'"
            )
        self.batch_size, self.max_len, self.mode = batch_size, max_len, mode
        self.cache = static_cache(model, max_len)
        self._cache_kw, self._keep_kw = _forward_kwargs(model)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._step_fn = self._step
        if mode == "compile":
            cuda = self.device.type == "cuda"
            compile_mode = "reduce-overhead" if cuda and backend == "inductor" else None
            self._step_fn = torch.compile(
                self._step, backend=backend, mode=compile_mode, fullgraph=True, dynamic=False
            )
        # static inputs of the step (a CUDA graph reads and writes these addresses)
        self._tok = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, 1, dtype=torch.long, device=self.device)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        kwargs = {self._cache_kw: self.cache, "position_ids": positions, "use_cache": True}
        if self._keep_kw:
            kwargs[self._keep_kw] = 1
        logits = self.model(input_ids=ids, **kwargs).logits
        return logits[:, -1].argmax(dim=-1, keepdim=True)

    def _step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self._forward(tok, pos)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Reset the cache, run the prompts, return each prompt's first new token [batch, 1]."""
        if ids.shape[0] != self.batch_size or ids.shape[1] >= self.max_len:
            raise ValueError(
                f"prompts of shape {tuple(ids.shape)} do not fit batch {self.batch_size} and cache {self.max_len}"
            )
        self.cache.reset()
        positions = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)
        with _eager():  # prefill is compute-bound: compiled regions would only add compile time per shape
            first = self._forward(ids, positions)
        self._tok.copy_(first)
        self._pos.fill_(ids.shape[1])
        return first

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """One decode step from the last token; returns the new token [batch, 1] (a fresh tensor)."""
        if self.mode == "graph":
            if self._graph is None:
                raise RuntimeError("call warm_up() before step() in mode 'graph'")
            self._graph.replay()
            return self._tok.clone()
        if self.mode == "compile" and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        nxt = self._step_fn(self._tok, self._pos)
        self._tok.copy_(nxt)
        self._pos.add_(1)
        return self._tok.clone()

    @torch.inference_mode()
    def warm_up(self, ids: torch.Tensor, steps: int = 3) -> None:
        """Compile / capture on the real shapes (a prefill and a few steps); the cache is reset by the next
        prefill, so the warm-up's tokens never leak into a measurement."""
        steps = max(1, min(steps, self.max_len - ids.shape[1]))  # the warm-up's tokens must fit the cache
        self.prefill(ids)
        if self.mode != "graph":
            for _ in range(steps):
                self.step()
            _sync(self.device)
            return
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # eager runs on a side stream before capture, as torch.cuda.graph asks
        with torch.cuda.stream(stream):
            for _ in range(steps):
                self._graph_body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.prefill(ids)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_body()
        self._graph = graph
        _sync(self.device)

    def _graph_body(self) -> None:
        nxt = self._step(self._tok, self._pos)
        self._tok.copy_(nxt)
        self._pos.add_(1)

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, output_len: int) -> torch.Tensor:
        """Prompts plus `output_len` greedy tokens (no stopping at EOS: a fixed length, as benchmarks use)."""
        out = [self.prefill(ids)]
        for _ in range(output_len - 1):
            out.append(self.step())
        return torch.cat([ids, *out], dim=1)

    @torch.inference_mode()
    def time(self, ids: torch.Tensor, output_len: int) -> DecodeTiming:
        """One timed generation: the prefill (TTFT) and the decode steps timed apart."""
        _sync(self.device)
        start = time.perf_counter()
        self.prefill(ids)
        _sync(self.device)
        first = time.perf_counter()
        for _ in range(output_len - 1):
            self.step()
        _sync(self.device)
        end = time.perf_counter()
        return DecodeTiming(first - start, end - first, ids.shape[0], output_len)


def _eager():
    """Run compiled regions eagerly (torch >= 2.6's set_stance), a no-op context before that."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def compile_block_regions(model: nn.Module) -> int:
    """torch.compile (default mode) each decoder block's MLP and attention projections in place; they
    hold no cache and no layer index, so the compiled code is shared by every layer of the same shape.
    Returns how many modules were wrapped."""
    # one compiled graph per (module kind, shape, batch): more than dynamo's default 8 entries per code object
    dynamo = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, limit):
            setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
    count = 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if ".layers." not in f".{name}" and not name.startswith("layers."):
            continue
        if leaf == "mlp" or leaf in ("q_proj", "k_proj", "v_proj", "o_proj"):
            module.compile(dynamic=False)
            count += 1
    return count
