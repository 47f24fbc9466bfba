"""Benchmarks (not tests): `python -m coupled_mamba.bench scan|model`."""
