"""The inspector's scale section (launch/inspect_model.py): bytes per collective and optimizer step, the
predicted step time on a stated cluster, the placement of chosen ranks (pipeline/model/step_time.py), and
the --dry-run check of the real parallelize step at that world size (pipeline/train/dry_run.py).
"""
from __future__ import annotations

import argparse

from pipeline.config.base import ConfigError
from pipeline.model.comm_model import StepShape
from pipeline.model.step_time import Cluster, scale_report


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("communication and step time (with --layout or --run-config)")
    g.add_argument("--cluster", action="append", default=[],
                   help="cluster model, e.g. inter_bw=25e9,mfu=0.35 (keys: gpu_flops, mfu, intra_bw, inter_bw, "
                        "gpus_per_node, alpha_intra, alpha_inter, overlap; defaults: H100 nodes)")
    g.add_argument("--ranks", default=None, help="ranks to place (and with --dry-run to check), e.g. 0,5,255; "
                                                 "default: rank 0 (--dry-run: every rank)")
    g.add_argument("--micro-batch", type=int, default=None, help="with --config: sequences per micro-batch (1)")
    g.add_argument("--grad-accum", type=int, default=None, help="with --config: micro-batches per step (1)")
    g.add_argument("--oe-unique", type=float, default=1.0,
                   help="unique OE rows a micro-batch looks up, as a share of tokens x tables (1 = upper bound)")
    g.add_argument("--dry-run", action="store_true",
                   help="with --run-config: build every chosen rank's groups and shards under a fake process "
                        "group on meta tensors and compare them with the placement printed here")


def parse_ranks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--ranks: expected comma-separated integers, got {text!r}") from None


def step_shape(args, report: dict) -> StepShape:
    run = report.get("run")
    if run:
        if args.micro_batch is not None or args.grad_accum is not None:
            raise ConfigError("--micro-batch / --grad-accum: with --run-config set train.micro_batch_size / "
                              "train.global_batch_size with -o instead")
        return StepShape(run["micro_batch_size"], run["seq_len"], run["gradient_accumulation_steps"])
    for flag, value in (("--micro-batch", args.micro_batch), ("--grad-accum", args.grad_accum)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1 (got {value})")
    return StepShape(args.micro_batch or 1, report["seq_len"], args.grad_accum or 1)


def add_scale(report: dict, model_cfg, layout, model, args, zero_config: dict | None) -> None:
    """report["scale"]: collectives, families, step time and placement (step_time.scale_report)."""
    if not 0 < args.oe_unique <= 1:
        raise ConfigError(f"--oe-unique: must be in (0, 1] (got {args.oe_unique})")
    lay = report["layout"]
    step = step_shape(args, report)
    ranks = parse_ranks(args.ranks) or [0]
    unique = None
    if model_cfg.over_encoding.enabled:
        unique = args.oe_unique * step.tokens * model_cfg.over_encoding.num_tables
    report["scale"] = scale_report(model_cfg, layout, step, model, zero_stage=lay["zero_stage"],
                                   precision=lay["param_dtype"], oe_shard_group=lay["oe_shard_group"],
                                   zero_config=zero_config, cluster=Cluster.parse(args.cluster),
                                   ranks=tuple(ranks), oe_unique_rows=unique)


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def print_scale(r: dict) -> None:
    s = r["scale"]
    st, cl, step = s["step_time"], s["cluster"], s["step"]
    print(f"communication per optimizer step on rank {s['rank']} ({step['grad_accum']} micro-batches of "
          f"{step['micro_batch']} x {step['seq_len']} tokens; payload = bytes handed to the collective, wire = "
          f"bytes leaving the rank, ring / uniform all-to-all; pipeline/model/comm_model.py):")
    print(f"  {'family':<9}{'collective':<42}{'op':<24}{'group':>10}{'calls':>7}{'payload MiB':>14}"
          f"{'wire MiB':>12}{'time ms':>10}")
    for c in s["collectives"]:
        print(f"  {c['family']:<9}{c['name'] + ' (' + c['phase'] + ')':<42}{c['op']:<24}"
              f"{c['group'] + ' ' + str(c['group_size']):>10}{c['calls']:>7}{_mib(c['payload']):>14}"
              f"{_mib(c['wire']):>12}{c['seconds'] * 1e3:>10.2f}")
    for name, f in s["families"].items():
        print(f"  {'total ' + name:<75}{'':>10}{'':>7}{_mib(f['payload']):>14}{_mib(f['wire']):>12}"
              f"{f['seconds'] * 1e3:>10.2f}")
    print(f"predicted step on {cl['gpu_flops'] / 1e12:g} TFLOP/s x MFU {cl['mfu']:g} per GPU, {cl['gpus_per_node']} "
          f"GPUs/node, intra {cl['intra_bw'] / 1e9:g} GB/s, inter {cl['inter_bw'] / 1e9:g} GB/s per GPU, alpha "
          f"{cl['alpha_intra'] * 1e6:g}/{cl['alpha_inter'] * 1e6:g} us, overlap {cl['overlap']:g} "
          f"(pipeline/model/step_time.py):")
    print(f"  compute {st['compute_s'] * 1e3:,.1f} ms + communication {st['comm_s'] * 1e3:,.1f} ms x "
          f"{1 - cl['overlap']:g} = {st['total_s'] * 1e3:,.1f} ms per step ({step['tokens_per_step']:,} tokens): "
          f"{st['tokens_per_s'] / 1e6:,.2f}M tokens/s, {st['tokens_per_s_per_gpu']:,.0f} per GPU, "
          f"communication {st['comm_share']:.0%} of the step")
    for rank, p in s["placement"].items():
        c = p["coords"]
        oe = f"OE rows [{p['oe_rows'][0]:,}, {p['oe_rows'][1]:,}) of {p['oe_rows'][2]:,}" if p["oe_rows"] else "no OE"
        ex = f"experts [{p['experts'][0]}, {p['experts'][1]}) of {p['experts'][2]}" if p["experts"] else "all experts"
        print(f"  rank {rank}: node {c['node_rank']}, tp {c['tp_rank']} dp {c['dp_rank']} ep {c['ep_rank']}; {oe}; "
              f"{ex}; engine params {p['engine_params']:,}, outside DeepSpeed {p['external_params']:,}")


def print_dry_run(d: dict) -> None:
    lay = d["layout"]
    print(f"dry run (fake process group, meta tensors) of world {d['world']} = dp {lay['dp']} x tp {lay['tp']}, "
          f"ep {lay['ep']}: {d['ranks_checked']} ranks built in {d['seconds']:.1f} s, "
          f"{'all equal to the placement above' if not d['mismatches'] else str(len(d['mismatches'])) + ' differ'}")
    for rank, problems in d["mismatches"].items():
        for line in problems[:20]:
            print(f"  rank {rank}: {line}")
    for line in d["skipped"]:
        print(f"  not built: {line}")
