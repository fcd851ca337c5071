"""Benchmarks: ``python -m risbench.bench <data|model> [overrides]``."""
