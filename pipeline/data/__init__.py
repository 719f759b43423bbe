"""Token-shard data: the on-disk format shared by data_prep (writer) and the training data loader (reader),
and the tokenizer both sides use (tokenizer.py).

Keep this package's import torch-free: data_prep and its worker processes import it.
"""
