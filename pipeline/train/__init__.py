"""Training: DeepSpeed engine set-up, the trainer loop and its callbacks, checkpoints, metrics."""
