"""Entry points: train, eval, generate, export, inspect_model (run as `python launch/<name>.py ...`)."""
