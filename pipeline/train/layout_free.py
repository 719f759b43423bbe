"""Layout-free training state: every parameter with its optimizer state, written so that any parallel layout
(world size, tp, ep, ZeRO stage) reads back exactly the slice it holds. This is what lets a checkpoint saved
at (world 2, ZeRO-2, ep 2) resume at (world 1, ZeRO-0) or (world 4, ZeRO-1, ep 4).

Folder step_N/layout_free/ (the parameters DeepSpeed holds; the OE table and expert shards kept outside it
are already written this way under step_N/external/, pipeline/parallel/sharded_checkpoint.py):
    pieces-RRRRR.safetensors  every tensor rank R writes: "<param>/param", "<param>/exp_avg", "<param>/exp_avg_sq"
                              (fp32 master values and Adam moments of the rank's piece)
    pieces-RRRRR.json         for each of its parameters: the full shape and the piece it holds
                              (split dim and [start, end), or the whole tensor)
    state.json                (rank 0) the Adam step count, the lr-schedule position, DeepSpeed's step counters
One writer per distinct piece: data-parallel rank 0 of every tp rank writes its tp slices, tp rank 0 alone
the replicated tensors. Under ZeRO-1/2/3 the full fp32 value and moments of each parameter are assembled
through DeepSpeed's public tensor-fragment API (safe_get_full_fp32_param / safe_get_full_optimizer_state,
a collective over the data-parallel group) and set back through safe_set_full_*.

Why our own format rather than DeepSpeed's universal checkpoint (ds_to_universal + load_universal): universal
loading lives inside DeepSpeed's ZeRO-1/2/3 and bf16 optimizers, so a ZeRO-0 target (the plain torch optimizer)
cannot load it; it is an offline conversion that reads and writes pickled torch.save files (we load no
pickles we did not scan); and re-slicing for tp needs Megatron's per-parameter partition patterns, while our
parameters carry their own shard info (pipeline/parallel/shard_info.py). Written at save time, every
checkpoint resumes on any layout with no conversion step; `python -m pipeline.train.reshard` consolidates
one offline.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.data.atomic_io import atomic_write_bytes, commit, tmp_path_for
from pipeline.parallel.shard_info import shard_info

LAYOUT_FREE_DIR = "layout_free"
EXTERNAL_DIR = "external"
STATE_JSON = "state.json"
FORMAT = "layout-free-v1"
MOMENTS = ("exp_avg", "exp_avg_sq")


class LayoutFreeStateMissing(FileNotFoundError):
    """The checkpoint holds no layout-free state (saved with checkpoint.layout_free false, or older)."""


@dataclass(frozen=True)
class Piece:
    file: Path
    dim: int | None        # split dimension of the full tensor; None: the piece is the whole tensor
    start: int
    end: int
    prefix: str            # tensor keys in the file: prefix + "param" / "exp_avg" / "exp_avg_sq"
    keys: tuple[str, ...]  # which of those the piece holds
    step: float | None = None   # the optimizer's step count stored with the piece (external shards)


def _region(shape: tuple[int, ...], dim: int | None, start: int, end: int) -> list[tuple[int, int]]:
    box = [(0, n) for n in shape]
    if dim is not None:
        box[dim] = (start, end)
    return box


class SavedState:
    """Read any slice of any saved parameter (or of its Adam moments) from a checkpoint, whatever layout wrote
    it: the dense pieces of layout_free/ and the row shards of external/. Not collective."""

    def __init__(self, ckpt: str | Path):
        self.ckpt = Path(ckpt)
        folder = self.ckpt / LAYOUT_FREE_DIR
        if not (folder / STATE_JSON).is_file():
            raise LayoutFreeStateMissing(f"{self.ckpt}: no {LAYOUT_FREE_DIR}/{STATE_JSON} (the checkpoint was saved "
                                         f"with checkpoint.layout_free false, or by an older version): it can only "
                                         f"resume on the layout that saved it")
        self.state = json.loads((folder / STATE_JSON).read_text())
        if self.state.get("format") != FORMAT:
            raise ValueError(f"{folder / STATE_JSON}: format {self.state.get('format')!r}, expected {FORMAT!r}")
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.pieces: dict[str, list[Piece]] = {}
        for index in sorted(folder.glob("pieces-*.json")):
            tensors = index.with_suffix(".safetensors")
            for name, e in json.loads(index.read_text()).items():
                self._add(name, tuple(e["shape"]), Piece(tensors, e["dim"], e["start"], e["end"], f"{name}/",
                                                         tuple(e["keys"])))
        from pipeline.parallel.sharded_checkpoint import read_meta
        external = self.ckpt / EXTERNAL_DIR
        for meta_file in sorted(external.glob("*/meta.json")) if external.is_dir() else []:
            meta = read_meta(meta_file.parent)
            shape = (meta["global_rows"], *meta.get("trailing_shape", [meta["dim"]]))
            for s in meta["shards"]:
                f = meta_file.parent / s["file"]
                step = None
                if "step" in meta["has_optimizer"]:
                    with safe_open(str(f), framework="pt") as h:
                        step = float(h.get_tensor("step").reshape(()))
                self._add(meta_file.parent.name, shape,
                          Piece(f, 0, s["row_start"], s["row_end"], "", ("param", *meta["has_optimizer"]), step))

    def _add(self, name: str, shape: tuple[int, ...], piece: Piece) -> None:
        if self.shapes.setdefault(name, shape) != shape:
            raise ValueError(f"{self.ckpt}: {name} saved with shapes {self.shapes[name]} and {shape}")
        self.pieces.setdefault(name, []).append(piece)

    def names(self) -> set[str]:
        return set(self.pieces)

    def has(self, name: str, key: str) -> bool:
        return name in self.pieces and all(key in p.keys for p in self.pieces[name])

    def step(self, name: str) -> float:
        """The optimizer step count of the parameter's saved optimizer."""
        steps = {p.step for p in self.pieces[name] if p.step is not None}
        return steps.pop() if len(steps) == 1 else float(self.state["adam_step"])

    def read(self, name: str, key: str, dim: int | None = None, start: int = 0, end: int = 0) -> torch.Tensor:
        """fp32 slice [start, end) along `dim` (None: the whole tensor) of the saved `key` of `name`."""
        if name not in self.pieces:
            raise KeyError(f"{self.ckpt}: no saved parameter {name!r} (saved: {len(self.pieces)} parameters)")
        shape = self.shapes[name]
        want = _region(shape, dim, start, end)
        out = torch.empty([hi - lo for lo, hi in want], dtype=torch.float32)
        covered = 0
        for piece in self.pieces[name]:
            have = _region(shape, piece.dim, piece.start, piece.end)
            both = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(want, have)]
            if any(lo >= hi for lo, hi in both):
                continue
            if key not in piece.keys:
                raise KeyError(f"{piece.file}: {name} has no saved {key!r}")
            src = tuple(slice(lo - h, hi - h) for (lo, hi), (h, _) in zip(both, have))
            dst = tuple(slice(lo - w, hi - w) for (lo, hi), (w, _) in zip(both, want))
            with safe_open(str(piece.file), framework="pt") as f:
                out[dst] = f.get_slice(piece.prefix + key)[src].to(torch.float32)
            covered += math.prod(hi - lo for lo, hi in both)
        if covered != out.numel():
            raise ValueError(f"{self.ckpt}: the saved pieces of {name} cover {covered} of the {out.numel()} "
                             f"elements of {key} asked for")
        return out


def write_pieces(folder: Path, rank: int, tensors: dict[str, torch.Tensor], index: dict) -> None:
    """One writer's pieces: tensors "<param>/<key>" and, per parameter, {"shape", "dim", "start", "end", "keys"}."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"pieces-{rank:05d}.safetensors"
    tmp = tmp_path_for(target)
    save_file(tensors, str(tmp))
    commit(tmp, target)
    atomic_write_bytes(folder / f"pieces-{rank:05d}.json", json.dumps(index, indent=1).encode())


def write_state(folder: Path, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / STATE_JSON, json.dumps(state, indent=1).encode())


# ---- DeepSpeed's parameters ------------------------------------------------------------------------------

def _full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """The shape of the whole (single-process) parameter a possibly sharded, possibly ZeRO-3 one stands for."""
    shape = list(getattr(p, "ds_shape", p.shape))
    info = shard_info(p)
    if info is not None:
        shape[info.dim] = info.full_size
    return tuple(shape)


def _piece_of(p: torch.Tensor) -> tuple[int | None, int, int]:
    info = shard_info(p)
    return (None, 0, 0) if info is None else (info.dim, info.start, info.end)


def _optimizer_steps(optimizer: torch.optim.Optimizer) -> set[float]:
    return {float(s["step"]) for s in optimizer.state.values() if "step" in s}


def _set_steps(optimizer: torch.optim.Optimizer, step: float) -> None:
    for s in optimizer.state.values():
        if isinstance(s.get("step"), torch.Tensor):
            s["step"].fill_(step)
        elif "step" in s:
            s["step"] = step


class LayoutFreeState:
    """Writes and reads the layout-free state of one training run (its engine and external parameters)."""

    def __init__(self, engine, base_optimizer: torch.optim.Optimizer, dp_rank: int, tp_rank: int, external=None):
        self.engine, self.base, self.external = engine, base_optimizer, external
        self.dp_rank, self.tp_rank = dp_rank, tp_rank
        self.zero = engine.zero_optimization_stage()

    def _prepare_moments(self, create: bool = False) -> None:
        """Make each parameter's Adam moments reachable through DeepSpeed's fragment API.
        `create`: a fresh engine's optimizer has no moments yet (Adam creates them at its first step); create
        them (zeros, to be overwritten) so that safe_set_full_optimizer_state has somewhere to write.
        ZeRO-1/2 also link each parameter's view of the moments once, right after the first optimizer step; as
        DeepSpeed steps the client optimizer one parameter group at a time, groups after the first have no
        moments yet at that point and stay linked to nothing (DeepSpeed 0.19: safe_get_full_optimizer_state
        then raises "exp_avg not found"). Link them again, through DeepSpeed's own helper, once they exist."""
        zero_opt = self.engine.optimizer
        base_state = zero_opt.optimizer.state
        if self.zero == 3:
            flats, lp_groups = zero_opt.fp32_partitioned_groups_flat, None
        else:
            flats, lp_groups = zero_opt.single_partition_of_fp32_groups, zero_opt.bit16_groups
        for flat in flats:
            if create and not base_state.get(flat):
                base_state[flat] = {"step": _step_tensor(zero_opt.optimizer, flat, 0.0),
                                    **{k: torch.zeros_like(flat) for k in MOMENTS}}
        if lp_groups is not None:
            from deepspeed.utils import lazy_init_hp_params_optimizer_state
            for lp_params, flat in zip(lp_groups, flats):
                if flat in base_state:
                    lazy_init_hp_params_optimizer_state(lp_params, flat, base_state)

    def _engine_tensors(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Collective under ZeRO: the fp32 master value and Adam moments of p (its local tp slice)."""
        if self.zero > 0:
            from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
            out = {"param": safe_get_full_fp32_param(p)}
            for key in MOMENTS:
                out[key] = safe_get_full_optimizer_state(p, key)
            return {k: v.reshape(_local_shape(p)) for k, v in out.items() if v is not None}
        state = self.base.state.get(p, {})
        return {"param": p.detach(), **{k: state[k] for k in MOMENTS if k in state}}

    def save(self, folder: Path) -> None:
        """Collective: every rank calls it, in the same parameter order (ZeRO assembles each one)."""
        folder = Path(folder)
        rank = dist.get_rank() if dist.is_initialized() else 0
        tensors, index = {}, {}
        if self.zero > 0:
            self._prepare_moments()
        for name, p in self.engine.module.named_parameters():
            got = self._engine_tensors(p)
            dim, start, end = _piece_of(p)
            if self.dp_rank != 0 or (dim is None and self.tp_rank != 0):
                continue   # another rank writes this piece
            for key, t in got.items():
                tensors[f"{name}/{key}"] = t.detach().to(torch.float32).contiguous().cpu()
            index[name] = {"shape": list(_full_shape(p)), "dim": dim, "start": start, "end": end,
                           "keys": sorted(got)}
        if index:
            write_pieces(folder, rank, tensors, index)
        if rank == 0:
            steps = _optimizer_steps(self.base)
            write_state(folder, {
                "format": FORMAT, "adam_step": max(steps) if steps else 0.0,
                "lr_schedule": {"last_epoch": int(self.engine.lr_scheduler.last_epoch)},
                "global_steps": int(self.engine.global_steps), "global_samples": int(self.engine.global_samples),
                "zero_stage": self.zero})
        # no barrier: the caller's next step is a collective that also reports a failed write on any rank

    @torch.no_grad()
    def load(self, ckpt: Path, optimizer_state: bool = True) -> list[str]:
        """Collective. Restore every parameter (engine and external) and its optimizer state from a checkpoint
        of any layout. Returns one line per source of what was read."""
        saved = SavedState(ckpt)
        if self.zero > 0 and optimizer_state:
            self._prepare_moments(create=True)
        wanted = set()
        for name, p in self.engine.module.named_parameters():
            wanted.add(name)
            self._load_engine_param(saved, name, p, optimizer_state)
        if optimizer_state:
            _set_steps(self.base, float(saved.state["adam_step"]))
        if self.external is not None:
            for ep in self.external.params:
                wanted.add(ep.name)
                self._load_external(saved, ep, optimizer_state)
        unused = saved.names() - wanted
        if unused:   # a parameter of the checkpoint this model does not have: the models differ
            raise ValueError(f"{ckpt}: saved parameters not in this model: {', '.join(sorted(unused)[:5])}")
        sched = self.engine.lr_scheduler
        sched.load_state_dict(saved.state["lr_schedule"])
        self.engine.global_steps = int(saved.state["global_steps"])
        self.engine.global_samples = int(saved.state["global_samples"])
        return [f"{len(wanted)} parameters re-partitioned from {ckpt.name} (saved at ZeRO-{saved.state['zero_stage']}"
                f", now ZeRO-{self.zero})" + ("" if optimizer_state else ", optimizer state NOT restored")]

    def _load_engine_param(self, saved: SavedState, name: str, p: torch.Tensor, optimizer_state: bool) -> None:
        dim, start, end = _piece_of(p)
        value = saved.read(name, "param", dim, start, end).reshape(_local_shape(p))
        moments = {k: saved.read(name, k, dim, start, end).reshape(_local_shape(p))
                   for k in MOMENTS if optimizer_state and saved.has(name, k)}
        if self.zero > 0:
            from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
            if self.zero == 3:
                import deepspeed
                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    p.data.copy_(value.to(p.device, p.dtype))
            else:
                p.data.copy_(value.to(p.device, p.dtype))
            safe_set_full_fp32_param(p, value.to(p.device))
            for key, v in moments.items():
                safe_set_full_optimizer_state(p, v.to(p.device), key)
            return
        p.data.copy_(value.to(p.device, p.dtype))
        if moments:
            state = self.base.state[p]
            for key, v in moments.items():
                state[key] = v.to(p.device, p.dtype)
            state["step"] = _step_tensor(self.base, p, float(saved.state["adam_step"]))

    def _load_external(self, saved: SavedState, ep, optimizer_state: bool) -> None:
        p = ep.param
        p.copy_(saved.read(ep.name, "param", 0, ep.start, ep.end).reshape(p.shape).to(p.dtype))
        optimizer = self.external.optimizer_of(ep)
        if not optimizer_state or optimizer is None or not saved.has(ep.name, "exp_avg"):
            return
        state = optimizer.state[p]
        for key in MOMENTS:
            state[key] = saved.read(ep.name, key, 0, ep.start, ep.end).reshape(p.shape).to(p.device, p.dtype)
        state["step"] = _step_tensor(optimizer, p, saved.step(ep.name))


def _local_shape(p: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))


def _step_tensor(optimizer: torch.optim.Optimizer, p: torch.Tensor, step: float) -> torch.Tensor:
    """Adam's step count the way torch creates it: on the parameter's device for fused / capturable groups."""
    # (ZeRO-3 hands the optimizer its flat sub-group partitions one at a time: p may be in no group right now)
    group = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), optimizer.defaults)
    on_device = group.get("fused") or group.get("capturable")
    return torch.tensor(step, dtype=torch.float32, device=p.device if on_device else "cpu")
