"""Evaluation: validation loss / perplexity and zero-shot multiple-choice downstream tasks."""
