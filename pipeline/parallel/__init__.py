"""Parallelism for training (issue 5): row-sharded Over-Encoding tables with all-to-all lookups, expert
parallelism, megatron-core tensor parallelism, and the step that applies them to a built model.
See docs/parallelism.md."""
