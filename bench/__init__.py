"""Benchmarks (run as `python bench/<name>.py ...`); bench.timing holds their shared timing helpers."""
