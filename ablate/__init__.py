"""ablate: declarative experiments for LLM compression by structured pruning and distillation."""

__version__ = "0.1.0"
