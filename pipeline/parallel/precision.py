"""The dtype tensors travel in between ranks under mixed precision.

Parameters are fp32 everywhere (deepspeed.precision=bf16 is DeepSpeed's torch_autocast: fp32 storage,
bf16 matmuls). A collective that only feeds a matmul can ship its operand in the autocast dtype, since the
matmul would round it to that dtype anyway: the result is bit-identical to the single-process path, at half
the bytes. Gradients that are summed (row gradients of a sharded table) travel in the parameter's dtype.
"""
from __future__ import annotations

import torch


def matmul_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul consumes `t` in: the autocast dtype under torch.autocast, else its own."""
    device = t.device.type
    if torch.is_autocast_enabled(device) and t.is_floating_point():
        return torch.get_autocast_dtype(device)
    return t.dtype
