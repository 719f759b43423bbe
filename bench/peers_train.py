"""Peer benchmark 1: a training step (forward + backward + AdamW) of our OLMoE vs transformers'
OlmoeForCausalLM with the same shape, weights (through our exporter, logits checked equal first) and batch,
CPU, fp32, one intra-op thread, at the sizes of bench/peers_hf.py.

Variants, interleaved step by step (bench/timing.py), each with its own copy of the weights:
  hf            OlmoeForCausalLM(input_ids, labels, output_router_logits=True): loss + its load-balancing loss
  ours          OLMoE(input_ids).loss: loss + load-balancing + router z-loss (what our trainer steps)
  ours+compile  the same with model.compile: true (every block through torch.compile, pipeline/parallel/compile.py)
  ours-plainCE  ours with the head's chunked loss replaced by Linear -> F.cross_entropy (the path before
                pipeline/model/linear_cross_entropy.py), to attribute the head's share
  ours-foreachAdamW (opt-in)  ours with torch AdamW's foreach implementation, what our trainer stepped on CPU
                before pipeline/train/build.py switched to the fused kernel
The optimizer is otherwise the same on every side: torch AdamW with its fused kernel, which is transformers
Trainer's default (adamw_torch_fused for torch >= 2.8) and our trainer's (pipeline/train/build.py).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.timing import interleaved, load_average, median, spread

VARIANTS = ("hf", "ours", "ours+compile", "ours-plainCE", "ours-foreachAdamW")
DEFAULT_VARIANTS = VARIANTS[:4]


def _adamw(params, impl: str = "fused"):
    import torch
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **{impl: True})


def _step_fn(model, loss_of, impl: str = "fused"):
    opt = _adamw(model.parameters(), impl)

    def step() -> None:
        loss_of(model).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _plain_head(model):
    """Swap the OutputHead for a plain nn.Linear holding the same weight: head_loss then takes the
    Linear -> cross_entropy path (no own `loss`)."""
    import torch
    plain = torch.nn.Linear(model.cfg.d_model, model.cfg.padded_vocab_size, bias=False)
    plain.weight = model.lm_head.weight
    model.lm_head = plain
    return model


def _compiled(model):
    from pipeline.parallel.compile import compile_blocks      # imported here: the bench also runs on older trees
    return compile_blocks(model)


def run_size(size: str, args) -> dict:
    from bench.peers_hf import build_ours, check_same_logits, load_hf, model_config, random_batch

    cfg = model_config(size)
    ids = random_batch(cfg, args.batch, args.seq)
    ours = build_ours(cfg)
    with tempfile.TemporaryDirectory(prefix="peers_hf_") as tmp:
        hf = load_hf(ours, Path(tmp) / "hf")
    rel = check_same_logits(ours, hf, ids[:, :64])
    make = {"hf": lambda: hf, "ours": lambda: ours, "ours+compile": lambda: _compiled(build_ours(cfg)),
            "ours-plainCE": lambda: _plain_head(build_ours(cfg)), "ours-foreachAdamW": lambda: build_ours(cfg)}
    steps = {name: _step_fn(make[name](), (lambda m: m(input_ids=ids, labels=ids, output_router_logits=True).loss)
                            if name == "hf" else (lambda m: m(ids).loss),
                            "foreach" if name == "ours-foreachAdamW" else "fused")
             for name in VARIANTS if name in args.train_variants}
    if "ours+compile" in steps:
        steps["ours+compile"]()          # compiles the blocks' forward and backward (not timed)
    load0 = load_average()
    wall, cpu = interleaved(steps, args.reps, warmup=1)
    load1 = load_average()
    ref = median(cpu["hf"]) if "hf" in cpu else None
    rows = {name: {"cpu_ms": median(cpu[name]) * 1e3, "cpu_spread": spread(cpu[name]),
                   "wall_ms": median(wall[name]) * 1e3,
                   "over_hf": median(cpu[name]) / ref if ref else None} for name in steps}
    print(f"\n[1 train step, {size}] {' '.join(cfg_shape(cfg))}, batch {args.batch}x{args.seq}, fp32, 1 thread, "
          f"{args.reps} interleaved reps, logits vs HF max rel diff {rel:.1e}, load avg {load0:.1f} -> {load1:.1f}")
    print(f"{'variant':<14}{'CPU ms':>10}{'spread':>8}{'/ hf':>8}{'wall ms':>10}")
    for name, r in rows.items():
        ratio = f"{r['over_hf']:>8.3f}" if r["over_hf"] is not None else f"{'-':>8}"
        print(f"{name:<14}{r['cpu_ms']:>10.1f}{r['cpu_spread']:>8.2f}{ratio}{r['wall_ms']:>10.1f}")
    return {"shape": cfg_shape(cfg), "batch": [args.batch, args.seq], "logits_rel_diff": rel,
            "load": [load0, load1], "variants": rows}


def cfg_shape(cfg) -> list[str]:
    keys = ("d_model", "n_layers", "n_heads", "n_experts", "top_k", "expert_hidden", "padded_vocab_size")
    return [f"{k}={getattr(cfg, k)}" for k in keys]


def add_args(ap) -> None:
    ap.add_argument("--sizes", nargs="+", default=["d128", "d512"], help="[%(default)s] (bench/peers_hf.py)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--train-variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS,
                    help="[%(default)s] (hf is the reference of the ratios)")


def run(args) -> dict:
    return {size: run_size(size, args) for size in args.sizes}
