"""Benchmarks: scripts that print numbers (and write docs/benchmarks.md); run each as `python -m bench.NAME`."""
