"""A small search spec on builtin:tiny-mistral (the `write` fixture is in tests/conftest.py)."""

# builtin:tiny-mistral (hidden 64, ffn 128, 4 heads over 2 KV heads, 4 layers, head_dim 24): a space of
# 6 x 6 x 2 x 2 = 144 shapes, 26 of them within 20% under 100k parameters.
SEARCH_SPEC = """\
name: t
teacher:
  model: builtin:tiny-mistral
data: {seq_len: 64, eval_tokens: 2k}
targets:
  width: {hidden_size: 48, intermediate_size: 96}
distill:
  loss: kld
  tokens: 2k
  global_batch: 8
  micro_batch: 4
search:
  budget: {params: 100k, tolerance: 0.2}
  space:
    max_width_pruning: 0.75
    max_depth_pruning: 0.5
    hidden_size: {divisor: 8}
    intermediate_size: {divisor: 16}
    num_hidden_layers: {divisor: 1}
  score: {metric: kl_to_teacher, top_k: 3}
  retrain: {tokens: 1k, lr: 5e-4}
"""


