"""Benchmarks: scripts that print figures (run as python -m bench.NAME from the repository root)."""
