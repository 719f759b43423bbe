"""Convert a checkpoint offline for another parallel layout, and print what was done.

    python -m pipeline.train.reshard runs/x/checkpoints/step_1000 --out runs/y/step_1000 --world 16 --ep 8 \
        --zero-stage 1
    deepspeed launch/train.py --config ... run_dir=runs/y train.resume=runs/y/step_1000   (on 16 ranks)

The output is a complete checkpoint folder (with checksums) for the target layout: config.yaml names the target
tp / ep / ZeRO stage; the OE table rows and the expert shards (with their Adam moments and step) are re-split
into the row ranges the target's ranks own, one file per rank; every other parameter is consolidated whole in
layout_free/ (each tp slice joined), which any tp / ZeRO stage slices at load; trainer state, data position and
lr-schedule position are carried over. DeepSpeed's own per-rank files are not rewritten (they exist only for the
layout that wrote them): the resume reads this state the way a resume on a changed layout does on the fly
(pipeline/train/layout_free.py), which is why converting first is optional. Works on one process, reading
bounded slices (never a whole OE table in memory).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import torch
import yaml

from pipeline.config.base import ConfigError
from pipeline.train.checkpoint import CONFIG_FILE, RNG_DIR, STATE_FILE
from pipeline.train.checkpoint_manifest import CheckpointDamaged, verify_checkpoint, write_manifest
from pipeline.train.layout_free import EXTERNAL_DIR, LAYOUT_FREE_DIR, MOMENTS, SavedState, write_pieces, write_state

OE_TABLE = "over_encoding.table"
_EXPERT = re.compile(r"\.experts\.w_(gate|up|down)$")


def target_config(saved: dict, world: int, tp: int | None, ep: int | None, zero_stage: int | None) -> dict:
    """The saved run config with the target layout, validated like a training start (one-line ConfigError)."""
    from pipeline.config.run import load_run_config
    from pipeline.train.deepspeed_config import gradient_accumulation_steps
    from pipeline.train.parallel_run import check_run_layout

    tree = json.loads(json.dumps(saved))
    par, ds = tree.setdefault("parallel", {}), tree.setdefault("deepspeed", {})
    for section, key, value in ((par, "tp", tp), (par, "ep", ep), (ds, "zero_stage", zero_stage)):
        if value is not None:
            section[key] = value
    cfg = load_run_config(data=tree)
    check_run_layout(cfg, world)
    gradient_accumulation_steps(cfg, world // cfg.parallel.tp)
    return tree


def _row_ranges(rows: int, parts: int) -> list[tuple[int, int]]:
    from pipeline.parallel.shard_info import even_bounds
    return [even_bounds(rows, parts, r) for r in range(parts)]


def _write_row_shards(saved: SavedState, name: str, out: Path, parts: int) -> int:
    """The parameter as `parts` row shards (external/ format), read slice by slice. Returns bytes written."""
    from pipeline.parallel.sharded_checkpoint import write_meta, write_shard

    folder = out / EXTERNAL_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = saved.shapes[name][0]
    ranges = _row_ranges(rows, parts)
    keys = [k for k in MOMENTS if saved.has(name, k)]
    written, like = 0, None
    for r, (start, end) in enumerate(ranges):
        tensors = {"param": saved.read(name, "param", 0, start, end)}
        tensors.update({k: saved.read(name, k, 0, start, end) for k in keys})
        if keys:
            tensors["step"] = torch.tensor([saved.step(name)], dtype=torch.float32)
        write_shard(folder, r, parts, tensors)
        written += sum(t.numel() * t.element_size() for t in tensors.values())
        like = tensors["param"]
    write_meta(folder, rows, like, sorted([*keys, "step"] if keys else []), ranges)
    return written


def reshard(ckpt: Path, out: Path, world: int, tp: int | None = None, ep: int | None = None,
            zero_stage: int | None = None, log=print) -> Path:
    ckpt, out = Path(ckpt), Path(out)
    verify_checkpoint(ckpt)       # every file against its checksum before anything is converted
    if out.exists():
        raise FileExistsError(f"--out {out}: exists (choose a new folder)")
    saved_cfg = yaml.safe_load((ckpt / CONFIG_FILE).read_text())
    state = json.loads((ckpt / STATE_FILE).read_text())
    tree = target_config(saved_cfg, world, tp, ep, zero_stage)
    saved = SavedState(ckpt)
    t_par, t_ep = tree["parallel"], int(tree["parallel"].get("ep", 1))
    t_tp = int(t_par.get("tp", 1))
    oe_parts = world if t_par.get("oe_shard_group", "dp") == "world" else world // t_tp
    s_par = saved_cfg.get("parallel", {})
    log(f"{ckpt} (world {state.get('world_size')}, tp {s_par.get('tp', 1)}, ep {s_par.get('ep', 1)}, "
        f"ZeRO-{saved_cfg.get('deepspeed', {}).get('zero_stage', 0)}) -> {out} (world {world}, tp {t_tp}, "
        f"ep {t_ep}, ZeRO-{tree['deepspeed'].get('zero_stage', 0)})")

    tmp = out.with_name(f".tmp_{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _convert(ckpt, saved, tmp, tree, state, world, oe_parts, t_ep, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)   # nothing half-written under the --out name
        raise
    tmp.rename(out)
    log(f"  trainer state (step {state['step']}, data position, lr schedule) carried over; resume with "
        f"train.resume={out} on {world} ranks")
    return out


def _convert(ckpt: Path, saved: SavedState, tmp: Path, tree: dict, state: dict, world: int, oe_parts: int,
             t_ep: int, log) -> None:
    dense, dense_index, dense_bytes = {}, {}, 0
    for name in sorted(saved.names()):
        shape = saved.shapes[name]
        before = f"{len(saved.pieces[name])} piece(s)"
        if name == OE_TABLE or (_EXPERT.search(name) and t_ep > 1):
            parts = oe_parts if name == OE_TABLE else t_ep
            nbytes = _write_row_shards(saved, name, tmp, parts)
            log(f"  {name} {list(shape)}: {before} -> {parts} row shards ({nbytes / 2**20:.1f} MiB)")
            continue
        keys = ["param", *[k for k in MOMENTS if saved.has(name, k)]]
        for key in keys:
            dense[f"{name}/{key}"] = saved.read(name, key)
            dense_bytes += dense[f"{name}/{key}"].numel() * 4
        dense_index[name] = {"shape": list(shape), "dim": None, "start": 0, "end": 0, "keys": keys}
        if len(saved.pieces[name]) > 1:
            log(f"  {name} {list(shape)}: {before} -> whole")
    write_pieces(tmp / LAYOUT_FREE_DIR, 0, dense, dense_index)
    write_state(tmp / LAYOUT_FREE_DIR, saved.state)
    log(f"  {len(dense_index)} dense parameters consolidated whole in {LAYOUT_FREE_DIR}/ "
        f"({dense_bytes / 2**20:.1f} MiB with their Adam moments)")

    rngs = sorted((ckpt / RNG_DIR).glob("rank_*.pt"))[:world]
    (tmp / RNG_DIR).mkdir()
    for f in rngs:
        shutil.copy2(f, tmp / RNG_DIR / f.name)
    log(f"  {len(rngs)} rank RNG file(s) copied")
    (tmp / CONFIG_FILE).write_text(yaml.safe_dump(tree, sort_keys=False))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "world_size": world, "resharded_from": str(ckpt)}, indent=1))
    write_manifest(tmp, collective=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.train.reshard", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a complete checkpoint folder (run_dir/checkpoints/step_N)")
    ap.add_argument("--out", type=Path, required=True, help="the new checkpoint folder (must not exist)")
    ap.add_argument("--world", type=int, required=True, help="target number of ranks")
    ap.add_argument("--tp", type=int, help="target parallel.tp (default: the saved one)")
    ap.add_argument("--ep", type=int, help="target parallel.ep (default: the saved one)")
    ap.add_argument("--zero-stage", type=int, help="target deepspeed.zero_stage (default: the saved one)")
    a = ap.parse_args(argv)
    try:
        reshard(a.checkpoint, a.out, a.world, a.tp, a.ep, a.zero_stage)
    except (ConfigError, CheckpointDamaged, FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
