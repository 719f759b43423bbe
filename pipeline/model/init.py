"""Counter-based, layout-independent parameter initialisation.

Every parameter's initial values are a function of (seed, parameter name, element position) only. The
parameter is read as its flat (row-major) element sequence, cut into fixed blocks of BLOCK elements; block b
is drawn by torch's truncated normal from a CPU generator seeded with hash(seed, name, b). Initialising any
contiguous range of that sequence (a rank's rows of the OE table, its experts of a stacked [E, ...] expert
weight, its vocabulary rows of a tensor-parallel embedding) generates only the overlapping blocks, so a
shard holds exactly the values the single-process model holds at those positions, whatever the layout, and
no temporary is larger than one block however large the parameter (the OE tables of OLMoE-1.3B + OE-12.8M
are 13.1B parameters, 52 GB in fp32, which no rank could hold whole at start-up).

Values are always drawn in fp32 on the CPU and then copied: the same seed gives the same model in any
parameter dtype and on any device (a GPU run starts from the CPU run's weights).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

BLOCK = 1 << 20            # elements per block: 4 MiB of fp32, the largest init temporary


@dataclass(frozen=True)
class InitSpec:
    kind: str              # "trunc_normal" (N(0, std) truncated at +-3 std) or "ones"
    std: float = 0.0


@dataclass(frozen=True)
class Shard:
    """The part of the full parameter a tensor holds: indices [start, start + its size) along `dim` of a
    full tensor of shape `full_shape`."""
    dim: int
    start: int
    full_shape: tuple[int, ...]


def block_seed(seed: int, name: str, block: int) -> int:
    """A stable 63-bit seed for one block (Python's hash() is salted per process, so not that)."""
    digest = hashlib.blake2b(f"{seed}/{name}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _block_values(spec: InitSpec, seed: int, name: str, block: int, length: int) -> torch.Tensor:
    out = torch.empty(length, dtype=torch.float32)
    generator = torch.Generator().manual_seed(block_seed(seed, name, block))
    nn.init.trunc_normal_(out, 0.0, spec.std, -3 * spec.std, 3 * spec.std, generator=generator)
    return out


@torch.no_grad()
def fill_flat_range(out: torch.Tensor, spec: InitSpec, seed: int, name: str, start: int, numel: int) -> None:
    """Write elements [start, start + out.numel()) of the full parameter's flat sequence (numel elements in
    all) into the contiguous tensor `out`, one block at a time."""
    flat = out.view(-1)
    if spec.kind == "ones":
        flat.fill_(1.0)
        return
    if spec.kind != "trunc_normal":
        raise ValueError(f"unknown init kind {spec.kind!r}")
    end = start + flat.numel()
    for block in range(start // BLOCK, -(-end // BLOCK)):
        b0 = block * BLOCK
        # the block's length depends only on the full parameter, never on the range asked for: a
        # generator's stream for n values is not a prefix of its stream for more values
        values = _block_values(spec, seed, name, block, min(BLOCK, numel - b0))
        lo, hi = max(start, b0), min(end, b0 + values.numel())
        flat[lo - start:hi - start].copy_(values[lo - b0:hi - b0])


@torch.no_grad()
def init_parameter(param: torch.Tensor, name: str, spec: InitSpec, seed: int, shard: Shard | None = None) -> None:
    """Initialise `param` (the whole parameter, or the `shard` of it that it holds)."""
    if param.is_meta:
        return
    full_shape = tuple(param.shape) if shard is None else shard.full_shape
    numel = math.prod(full_shape)
    if shard is None or shard.dim == 0:
        # a dim-0 range is one contiguous range of the flat sequence: only its blocks are generated
        row = math.prod(full_shape[1:])
        start = 0 if shard is None else shard.start * row
        target = param if param.is_contiguous() else torch.empty_like(param, memory_format=torch.contiguous_format)
        fill_flat_range(target, spec, seed, name, start, numel)
        if target is not param:
            param.copy_(target)
        return
    # Other dims (row-parallel TP weights split along their input dim) are not contiguous in the flat order:
    # draw this one layer's full weight and slice it. Bounded by one dense layer (D x H), never by the
    # OE table or the stacked experts, which are only ever split along dim 0.
    full = torch.empty(full_shape, dtype=torch.float32)
    fill_flat_range(full, spec, seed, name, 0, numel)
    param.copy_(full.narrow(shard.dim, shard.start, param.shape[shard.dim]))


def init_module(module: nn.Module, spec_of: Callable[[str, torch.Tensor], InitSpec], seed: int,
                shard_of: Callable[[torch.Tensor], Shard | None] | None = None) -> None:
    """Initialise every parameter of `module` by name (names are the single-process model's names)."""
    for name, param in module.named_parameters():
        init_parameter(param, name, spec_of(name, param), seed, shard_of(param) if shard_of else None)


def materialize(module: nn.Module, device: torch.device | str) -> None:
    """Module.to_empty that keeps each parameter's attributes (the `_oe_table` / `_moe_expert` / shard
    marks): to_empty replaces a meta parameter by a new Parameter without them. Values are uninitialised."""
    done: dict[int, nn.Parameter] = {}
    for m in module.modules():
        for key, p in m._parameters.items():
            if p is not None and id(p) not in done:
                new = nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
                new.__dict__.update(p.__dict__)
                done[id(p)] = new
            if p is not None:
                m._parameters[key] = done[id(p)]
        for key, b in m._buffers.items():
            if b is not None:
                m._buffers[key] = torch.empty_like(b, device=device)


def draw_seed() -> int:
    """A model seed from torch's global CPU generator (so torch.manual_seed(s) before a build fixes the model);
    explicit device: a build under `with torch.device("meta")` must still draw a real number."""
    return int(torch.randint(0, 2**62, (), device="cpu").item())
