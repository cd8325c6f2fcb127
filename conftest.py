"""Puts the repository root on sys.path under plain `pytest` (pytest inserts a root conftest's
folder), so the tests in tests/ import the benchmark package `benchmarks.lowcarbon`."""
