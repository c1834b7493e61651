"""Benchmarks of airflow-mlserver: ``make bench`` (or ``python -m bench [--only NAME] [--quick]``).

Each benchmark is a function ``(quick: bool) -> BenchResult`` registered in :data:`bench.__main__.BENCHMARKS`;
shared helpers (raw-HTTP client, memory sampling, result types) live in :mod:`bench.common`.
"""
