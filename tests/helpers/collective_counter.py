"""Count the bytes of every torch.distributed collective a process issues, attributed to the code that issued
it (test code only: it wraps the module-level functions of torch.distributed, which our code, DeepSpeed's comm
backend and megatron-core all call through).

    counter = CollectiveCounter().install()     # before deepspeed.init_distributed: DeepSpeed keeps a
    ...                                         # reference to all_gather_into_tensor / reduce_scatter_tensor
    counter.uninstall()

Each call becomes a Call(op, source, phase, dtype, payload, off_rank, group_size, tag): `payload` = the bytes
the rank hands to the collective (all_to_all: its input incl. the part it keeps; all_reduce: the tensor;
all_gather: its input; reduce_scatter: its input), `off_rank` = what leaves the rank for all_to_all (input
minus the rank's own split). `source` = the first frame (innermost first) in a file of SOURCES, so a lookup
inside the model inside DeepSpeed's forward counts as the lookup's. `phase` = "backward" while autograd runs a
node (torch._C._current_autograd_node), else "forward" (which includes the optimizer step). `tag` = whatever
the test set counter.tag to (the optimizer step).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

OPS = ("all_to_all_single", "all_to_all", "all_gather_into_tensor", "all_gather", "all_reduce",
       "all_reduce_coalesced", "reduce_scatter_tensor", "reduce_scatter", "broadcast", "reduce", "send", "recv",
       "gather", "scatter")
# innermost match wins: our collectives first, then the libraries that issue theirs
SOURCES = (("pipeline/parallel/sharded_embedding.py", "oe"), ("pipeline/parallel/expert_parallel.py", "ep"),
           ("pipeline/parallel/tensor_parallel.py", "tp"), ("megatron/core/tensor_parallel", "tp"),
           ("pipeline/train/external_params.py", "external"), ("deepspeed/", "zero"), ("pipeline/", "pipeline_other"))


@dataclass
class Call:
    op: str
    source: str
    phase: str
    dtype: str
    payload: int
    off_rank: int
    group_size: int
    tag: object


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else sum(_nbytes(x) for x in t)


def _source() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        for part, name in SOURCES:
            if part in path:
                return name
        frame = frame.f_back
    return "other"


def _arg(args, kwargs, i, name):
    return kwargs[name] if name in kwargs else (args[i] if len(args) > i else None)


def _measure(op: str, args, kwargs) -> tuple[torch.Tensor | None, int, int, int]:
    """(a tensor of the call, payload bytes, off-rank bytes, group size)."""
    group = kwargs.get("group")
    if op == "all_to_all_single":
        out, inp = _arg(args, kwargs, 0, "output"), _arg(args, kwargs, 1, "input")
        splits = _arg(args, kwargs, 3, "input_split_sizes")
        group = group if group is not None else _arg(args, kwargs, 4, "group")
        size = dist.get_world_size(group)
        me = dist.get_rank(group)
        rows = inp.shape[0] if inp.dim() else 1
        row_bytes = _nbytes(inp) // max(rows, 1)
        own = (splits[me] if splits else rows // size) * row_bytes
        return inp, _nbytes(inp), _nbytes(inp) - own, size
    if op in ("all_gather_into_tensor", "reduce_scatter_tensor"):
        inp = _arg(args, kwargs, 1, "input_tensor" if op == "all_gather_into_tensor" else "input")
        group = group if group is not None else _arg(args, kwargs, 2, "group")
        return inp, _nbytes(inp), 0, dist.get_world_size(group)
    if op == "all_gather":
        inp = _arg(args, kwargs, 1, "tensor")
        group = group if group is not None else _arg(args, kwargs, 2, "group")
        return inp, _nbytes(inp), 0, dist.get_world_size(group)
    first = _arg(args, kwargs, 0, "tensor" if op != "all_reduce_coalesced" else "tensors")
    if op in ("all_reduce", "all_reduce_coalesced"):
        group = group if group is not None else _arg(args, kwargs, 2, "group")
    tensor = first if isinstance(first, torch.Tensor) else (first[0] if first else None)
    size = dist.get_world_size(group) if op not in ("send", "recv") else 2
    return tensor, _nbytes(first) if first is not None else 0, 0, size


class CollectiveCounter:
    def __init__(self):
        self.calls: list[Call] = []
        self.tag = None
        self._originals: dict[str, object] = {}

    def install(self) -> "CollectiveCounter":
        for op in OPS:
            original = getattr(dist, op)
            self._originals[op] = original
            setattr(dist, op, self._wrap(op, original))
        return self

    def uninstall(self) -> None:
        for op, fn in self._originals.items():
            setattr(dist, op, fn)
        self._originals.clear()

    def _wrap(self, op, original):
        def counted(*args, **kwargs):
            tensor, payload, off_rank, size = _measure(op, args, kwargs)
            phase = "backward" if torch._C._current_autograd_node() is not None else "forward"
            dtype = str(tensor.dtype).replace("torch.", "") if tensor is not None else "-"
            self.calls.append(Call(op, _source(), phase, dtype, payload, off_rank, size, self.tag))
            return original(*args, **kwargs)
        counted.__wrapped__ = original
        return counted

    def totals(self, tags) -> dict[tuple[str, str, str], dict[str, int]]:
        """Per (source, op, phase): calls, payload and off-rank bytes summed over the calls tagged with `tags`."""
        out: dict[tuple[str, str, str], dict[str, int]] = {}
        for c in self.calls:
            if c.tag in tags:
                t = out.setdefault((c.source, c.op, c.phase), {"calls": 0, "payload": 0, "off_rank": 0})
                t["calls"] += 1
                t["payload"] += c.payload
                t["off_rank"] += c.off_rank
        return out
