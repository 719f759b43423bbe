"""Trainer callbacks, one per file; `Callback` documents the hooks and their order."""
from pipeline.train.callbacks.callback import Callback, ordered
from pipeline.train.callbacks.checkpoint import CheckpointCallback
from pipeline.train.callbacks.metrics import MetricsCallback
from pipeline.train.callbacks.speed import SpeedCallback
from pipeline.train.callbacks.validation import ValidationCallback

__all__ = ["Callback", "CheckpointCallback", "MetricsCallback", "SpeedCallback", "ValidationCallback", "ordered"]
