"""The benchmark: `python -m benchmarks` (see docs/performance.md)."""
