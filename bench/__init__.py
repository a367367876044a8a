"""Benchmarks of radius-proxy; each script writes its own section of docs/performance.md."""
