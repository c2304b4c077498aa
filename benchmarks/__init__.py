"""Benchmarks: `python -m benchmarks.NAME` from the repository root; each prints a table."""
