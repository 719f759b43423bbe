"""P4: MoE layer time / dense SwiGLU layer of equal active parameters, and the dispatch share (CPU).

The dense baseline has hidden = top_k * expert_hidden, i.e. the same FLOPs per token as the k experts a
token visits. Each variant is one forward + backward on the same input; variants are interleaved and the
figures are medians of process CPU time (bench/timing.py). Parts of the MoE timed on their own:
  router    Linear + softmax + top-k (forward + backward)
  experts   the per-expert SwiGLU GEMMs on already sorted inputs (forward + backward)
  dispatch  = moe - router - experts: sort, gather, gate scaling, scatter-add, auxiliary losses.

    DS_ACCELERATOR=cpu .venv/bin/python bench/moe_layer.py [--d 512 --experts 64 --top-k 8
        --hidden 256 --tokens 1024] [--json runs/bench/p4.json]
"""
from __future__ import annotations

import argparse
import os

from bench.timing import interleaved, load_average, median, spread, write_json


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads (imported here, not at the top)
    import torch

    from pipeline.model.mlp import SwiGLU
    from pipeline.model.moe import MoE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256, help="expert SwiGLU hidden")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    moe = MoE(args.d, args.experts, args.top_k, args.hidden)
    torch.nn.init.normal_(moe.router.weight, std=0.02)
    dense = SwiGLU(args.d, args.top_k * args.hidden)
    x = torch.randn(args.tokens, args.d, requires_grad=True)
    with torch.no_grad():       # the routing of x, frozen, for the experts-only variant
        _, _, _, experts = moe.route(x)
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=args.experts)
        x_sorted = x[order // args.top_k].detach().requires_grad_(True)

    def run_moe():
        y, stats = moe(x)
        (y.square().mean() + stats.lb + stats.z).backward()

    def run_dense():
        dense(x).square().mean().backward()

    def run_router():
        logits, probs, gates, _ = moe.route(x)
        (gates.sum() + probs.mean() + logits.mean()).backward()

    def run_experts():
        moe.experts(x_sorted, counts).square().mean().backward()

    variants = {"dense": run_dense, "moe": run_moe, "router": run_router, "experts": run_experts}
    load0 = load_average()
    _, times = interleaved(variants, args.reps, warmup=2)    # process CPU time (1 thread), see timing.py
    load1 = load_average()
    med = {k: median(v) for k, v in times.items()}
    dispatch = med["moe"] - med["router"] - med["experts"]
    print(f"P4: MoE (E={args.experts}, k={args.top_k}, H={args.hidden}) vs dense SwiGLU (hidden "
          f"{args.top_k * args.hidden}), D={args.d}, {args.tokens} tokens, fwd+bwd, threads {args.threads}, "
          f"load avg {load0:.1f} -> {load1:.1f}")
    print(f"{'part':<10}{'CPU ms':>11}{'spread':>8}{'/ dense':>9}{'/ moe':>8}")
    for name in variants:
        print(f"{name:<10}{med[name] * 1e3:>11.2f}{spread(times[name]):>8.2f}{med[name] / med['dense']:>9.3f}"
              f"{med[name] / med['moe']:>8.3f}")
    print(f"{'dispatch':<10}{dispatch * 1e3:>11.2f}{'':>8}{dispatch / med['dense']:>9.3f}{dispatch / med['moe']:>8.3f}")
    write_json(args.json, {"bench": "P4_moe_layer", "args": vars(args), "load": [load0, load1],
                           "median_ms": {k: v * 1e3 for k, v in med.items()}, "dispatch_ms": dispatch * 1e3,
                           "moe_over_dense": med["moe"] / med["dense"], "dispatch_share": dispatch / med["moe"]})


if __name__ == "__main__":
    main()
