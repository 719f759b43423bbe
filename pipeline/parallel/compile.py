"""`model.compile: true`: torch.compile of every transformer block, applied in the prepare step.

Per block, as torchtitan's parallelize step does (one compiled region per block rather than the whole model:
compile time stays that of one block, since identical blocks share the compiled code, and a graph break
in the embedding, the head or the loss cannot split a block). `nn.Module.compile` compiles in place, so
the module tree, parameter names and state-dict keys are unchanged (checkpoints and exporters read them).
dynamic=False: training shapes are fixed (micro-batch x seq_len), so each block is specialised to them; a
validation batch of another shape compiles once more. Inductor fuses the blocks' elementwise work (norms,
RoPE, SwiGLU gating, residual adds) into generated kernels; GEMMs, attention and the grouped expert GEMMs
stay library calls (pipeline/model/grouped_mm.py makes the last traceable in fp32).
"""
from __future__ import annotations

from torch import nn

from pipeline.model.block import Block


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The trunk's blocks and those inside MTP modules (every Block of the model)."""
    return [m for m in model.modules() if isinstance(m, Block)]


def compile_blocks(model: nn.Module) -> nn.Module:
    """Compile each block in place (first call of each compiles; see module docstring); returns the model."""
    for block in transformer_blocks(model):
        block.compile(dynamic=False)
    return model
