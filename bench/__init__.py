"""QLCP benchmarks, runnable as modules: ``python -m bench.backlog``."""
