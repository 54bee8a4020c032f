"""Benchmarks (bench/README.md); ``python -m bench`` runs the load bench (bench/load.py)."""
