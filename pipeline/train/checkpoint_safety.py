"""Refuse checkpoints whose pickles could execute code, before anything unpickles them.

DeepSpeed reads its own checkpoint files with `torch.load(weights_only=False)` (its checkpoint engine and
zero_to_fp32), i.e. full pickle: a crafted file would run arbitrary code on load. So every `*.pt` under a
checkpoint folder is checked statically first with torch's own scanner
(`torch.serialization.get_unsafe_globals_in_checkpoint`): it disassembles data.pkl without executing it,
accepts only the opcodes of torch's weights_only unpickler (no STACK_GLOBAL, INST, OBJ, ...) and lists
every referenced global that weights_only loading would not allow. Allowed are torch's own weights_only set
plus the few plain-data DeepSpeed classes its optimizer states really contain (measured on ZeRO 0-2, fp32
and bf16). Anything else, a legacy (non-zip) pickle, or an unreadable pickle is rejected with one line
naming the file. The scan reads only the small pickle record, never the tensor data.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

# Data-only classes inside DeepSpeed's ZeRO/bf16 optimizer states: an enum, a dataclass of two ints and
# the (static, for fp32/bf16) loss scaler; rebuilding them calls no user-controlled function.
DEEPSPEED_DATA_CLASSES = frozenset({
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
})


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that could execute code when loaded (or cannot be checked)."""


def check_file_is_safe(path: Path) -> None:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise UnsafeCheckpointError(f"{path}: refused: not a checkable torch.save zip checkpoint "
                                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    bad = sorted(set(unsafe) - DEEPSPEED_DATA_CLASSES)
    if bad:
        raise UnsafeCheckpointError(f"{path}: refused: its pickle references {', '.join(bad)}, which could "
                                    f"execute code on load (allowed: tensors, plain containers and "
                                    f"{', '.join(sorted(DEEPSPEED_DATA_CLASSES))})")


def check_checkpoint_is_safe(folder: str | Path) -> None:
    """Scan every *.pt file under a checkpoint folder; raise UnsafeCheckpointError on the first bad one."""
    for path in sorted(Path(folder).rglob("*.pt")):
        check_file_is_safe(path)
