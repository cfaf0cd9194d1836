"""The bandwidth roofline of one decode step: the least time a token can take on a given device.

A decode step of a dense transformer reads every weight once (whatever the batch, up to where compute
takes over) and the KV cache of every sequence, so `bytes per step / memory bandwidth` is a floor under
the time per output token. A measurement close to it says the serving path is as fast as the memory
allows; far above it says the time went elsewhere (Python, kernel launches, unfused quantisation).

Only the standard library: the bench script and the report use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# HBM bandwidth in bytes/s by the names torch.cuda.get_device_name gives; the first matching entry wins,
# every word of an entry must appear (case-insensitive) in the device name.
BANDWIDTHS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("h200",), 4.8e12),
    (("h100", "pcie"), 2.0e12),
    (("h100", "nvl"), 3.9e12),
    (("h100",), 3.35e12),  # SXM5: "NVIDIA H100 80GB HBM3"
    (("a100", "80gb"), 2.0e12),
    (("a100",), 1.555e12),  # 40GB
)

# bytes per element of the weights of the layers a precision quantises; the others stay at 2 (BF16)
PRECISION_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp8-wo": 1.0}


def bandwidth(device: str) -> float | None:
    """Memory bandwidth (bytes/s) of a device by name, None when it is not in the table."""
    name = device.lower()
    for words, value in BANDWIDTHS:
        if all(w in name for w in words):
            return value
    return None


@dataclass(frozen=True)
class Shape:
    """What a decode step reads: dense decoder-only transformer with grouped-query attention."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool = False  # lm_head shares the embedding matrix

    @classmethod
    def of(cls, config) -> Shape:
        """From a Hugging Face (Llama/Mistral-like) config."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            ffn=config.intermediate_size,
            vocab=config.vocab_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def block_linear_params(self) -> int:
        """Parameters of the decoder blocks' linear layers (q, k, v, o, gate, up, down): what FP8 quantises."""
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.ffn
        return self.layers * (attn + mlp)

    def block_linear_rows(self) -> int:
        """Output channels of those layers (one FP8 scale each with per-row scaling)."""
        return self.layers * (
            self.head_dim * (self.heads + 2 * self.kv_heads) + self.hidden + 2 * self.ffn + self.hidden
        )

    def other_params_read(self) -> int:
        """Parameters read per step outside the block linears: norms and lm_head (embedding rows: negligible)."""
        return (2 * self.layers + 1) * self.hidden + self.vocab * self.hidden

    def kv_bytes_per_token(self, bytes_per_elem: float = 2.0) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_elem


def weight_bytes_per_step(shape: Shape, precision: str) -> float:
    """Bytes of weights one decode step reads at `precision` (FP8: block linears 1 byte + a float32 scale
    per output row; norms and lm_head stay BF16)."""
    if precision not in PRECISION_BYTES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISION_BYTES)}")
    per = PRECISION_BYTES[precision]
    rest = 4.0 if precision == "fp32" else 2.0
    scales = 4.0 * shape.block_linear_rows() if precision.startswith("fp8") else 0.0
    return shape.block_linear_params() * per + scales + shape.other_params_read() * rest


def kv_bytes_per_step(
    shape: Shape, batch_size: int, input_len: int, output_len: int, precision: str
) -> float:
    """KV cache bytes one decode step reads, averaged over the steps (context input_len .. input+output-1);
    the cache stays in the activation dtype (4 bytes in fp32, else 2)."""
    per = 4.0 if precision == "fp32" else 2.0
    mean_context = input_len + (output_len - 1) / 2
    return batch_size * mean_context * shape.kv_bytes_per_token(per)


def roofline_tpot(
    shape: Shape, precision: str, batch_size: int, input_len: int, output_len: int, device: str
) -> float | None:
    """Least seconds per output token on `device` (None when its bandwidth is unknown)."""
    bw = bandwidth(device)
    if bw is None:
        return None
    total = weight_bytes_per_step(shape, precision) + kv_bytes_per_step(
        shape, batch_size, input_len, output_len, precision
    )
    return total / bw
