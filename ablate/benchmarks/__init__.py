"""Downstream benchmarks: lm-evaluation-harness tasks run on a model already in memory."""
