"""Sampling from a trained model with a KV cache and the Over-Encoding n-gram id cache."""
