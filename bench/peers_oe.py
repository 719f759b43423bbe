"""Peer benchmark 2: our Over-Encoding embedding vs a literal implementation of the paper's Alg. 1, one
training step of the embedding alone (forward + backward + optimizer step), CPU fp32, one thread.

Literal Alg. 1 (the paper's pseudocode): k(n-1) separate nn.Embedding tables (table t: m + 2t rows,
width D/(k(n-1))), one nn.Linear(width -> D) each, int64 n-gram ids g = x_i + x_{i-1} V + x_{i-2} V^2
(exact for n = 3), output (E_tok[x] + sum_t W_t E_t[g mod (m+2t)]) / (1 + k(n-1)). Ours:
pipeline/model/over_encoding.py (one stacked table, one GEMM for all projections, vectorised ids).
Both start from the same weights; their outputs are checked equal before timing. The 1-gram embedding
E_tok is part of the output but frozen on both sides (it exists without Over-Encoding too), so the step is
the Over-Encoding work: n-gram ids, lookups, projections, their backward and the optimizer on tables and
projections. Variants, interleaved:
  literal         AdamW (fused kernel) on every parameter: what a user of Alg. 1 trains with
  literal_sparse  nn.Embedding(sparse=True) tables + torch.optim.SparseAdam, AdamW on the rest
  ours            AdamW on the table (parallel.table_optimizer: adamw, paper-faithful dynamics)
  ours_sparse     sparse table gradients + RowSparseAdam (parallel.table_optimizer: row_sparse_adam)
Memory: bytes of parameters + gradients + optimizer state after a step, and the peak RSS of a fresh process
during 3 training steps of one variant (above its RSS after imports; construction excluded).
"""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from torch import nn

from bench.timing import interleaved, load_average, median, spread

VARIANTS = ("literal", "literal_sparse", "ours", "ours_sparse")
REPO_ROOT = __file__.rsplit("/bench/", 1)[0]


class LiteralOverEncoding(nn.Module):
    """Alg. 1 as the paper writes it (see the module docstring)."""

    def __init__(self, vocab: int, d_model: int, m: int, n: int, k: int, sparse: bool):
        super().__init__()
        self.vocab, self.m, self.n, self.k = vocab, m, n, k
        width = d_model // (k * (n - 1))
        self.tok = nn.Embedding(vocab, d_model)
        self.tables = nn.ModuleList(nn.Embedding(m + 2 * t, width, sparse=sparse) for t in range(k * (n - 1)))
        self.projs = nn.ModuleList(nn.Linear(width, d_model, bias=False) for _ in range(k * (n - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tok(x)
        for order in range(2, self.n + 1):
            g = torch.zeros_like(x)
            for j in range(order):      # x_{i-j} (token 0 before the start) times V^j, in int64
                g = g + nn.functional.pad(x, (j, 0))[:, : x.shape[1]] * self.vocab ** j
            for s in range(self.k):
                t = (order - 2) * self.k + s
                out = out + self.projs[t](self.tables[t](g % (self.m + 2 * t)))
        return out / (1 + self.k * (self.n - 1))


class OursOverEncoding(nn.Module):
    """The token embedding + pipeline/model/over_encoding.py's OverEncoding, as the model composes them."""

    def __init__(self, vocab: int, d_model: int, m: int, n: int, k: int):
        from pipeline.config.model import OverEncodingConfig
        from pipeline.model.over_encoding import OverEncoding
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.oe = OverEncoding(OverEncodingConfig(enabled=True, n=n, k=k, m=m), d_model, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.oe(self.tok(x), x)[0]


def _copy_weights(ours, literal) -> None:
    with torch.no_grad():
        literal.tok.weight.copy_(ours.tok.weight)
        offsets = ours.oe.row_offsets.tolist()
        width = ours.oe.table_dim
        for t, (table, proj) in enumerate(zip(literal.tables, literal.projs)):
            table.weight.copy_(ours.oe.table[offsets[t]:offsets[t] + table.weight.shape[0]])
            proj.weight.copy_(ours.oe.proj.weight[:, t * width:(t + 1) * width])


def build_variant(name: str, args):
    """(module, optimizers) of one variant, weights drawn from seed 0 (ours) and copied (literal)."""
    from pipeline.parallel.table_optimizers import build_table_optimizer, use_sparse_table_grads

    torch.manual_seed(0)
    ours = OursOverEncoding(args.oe_vocab, args.oe_d, args.oe_m, args.oe_n, args.oe_k)
    ours.tok.weight.requires_grad_(False)
    if name.startswith("ours"):
        table = ours.oe.table
        rest = [p for p in ours.parameters() if p is not table and p.requires_grad]
        opts = [torch.optim.AdamW(rest, lr=1e-3, fused=True)]
        if name == "ours_sparse":
            use_sparse_table_grads(ours)
            opts.append(build_table_optimizer("row_sparse_adam", [table], lr=1e-3))
        else:
            opts.append(build_table_optimizer("adamw", [table], lr=1e-3))
        return ours, opts
    literal = LiteralOverEncoding(args.oe_vocab, args.oe_d, args.oe_m, args.oe_n, args.oe_k,
                                  sparse=name == "literal_sparse")
    _copy_weights(ours, literal)
    literal.tok.weight.requires_grad_(False)
    del ours
    if name == "literal_sparse":
        tables = [t.weight for t in literal.tables]
        rest = [p for p in literal.parameters() if all(p is not t for t in tables) and p.requires_grad]
        return literal, [torch.optim.AdamW(rest, lr=1e-3, fused=True), torch.optim.SparseAdam(tables, lr=1e-3)]
    return literal, [torch.optim.AdamW([p for p in literal.parameters() if p.requires_grad], lr=1e-3, fused=True)]


def _batch(args):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.oe_vocab, (args.oe_batch, args.oe_seq), generator=g)
    probe = torch.randn(args.oe_batch, args.oe_seq, args.oe_d, generator=g)   # loss = <output, probe>
    return ids, probe


def _step_fn(module, opts, ids, probe):
    def step() -> None:
        (module(ids) * probe).sum().backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
    return step


def state_bytes(module, opts) -> int:
    """Parameters + gradients (sparse: values and indices) + optimizer state tensors, in bytes."""
    def nbytes(t) -> int:
        if t is None:
            return 0
        if t.is_sparse:
            return nbytes(t._values()) + nbytes(t._indices())
        return t.numel() * t.element_size()
    total = sum(nbytes(p) + nbytes(p.grad) for p in module.parameters())
    for o in opts:
        for state in o.state.values():
            total += sum(nbytes(v) for v in state.values() if isinstance(v, torch.Tensor))
    return total


def peak_rss_child(name: str, args) -> int:
    """Peak RSS (bytes) of a fresh process building `name` and taking 3 steps, above its RSS after imports."""
    cfg = json.dumps({k: getattr(args, k) for k in vars(args) if k.startswith("oe_")})
    proc = subprocess.run([sys.executable, "-m", "bench.peers_oe", name, cfg], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_above_imports"])


def _rss(field: str) -> int:
    """VmRSS / VmHWM (peak) of this process in bytes; not ru_maxrss, which Linux carries over from the forking
    parent into an exec'd child (a child of a large parent would report the parent's size)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _child(name: str, cfg_json: str) -> None:
    """Peak RSS of 3 training steps above the RSS after imports. The peak is reset after the build
    (/proc/self/clear_refs), whose initialisation temporaries would otherwise set it for every variant."""
    import argparse
    import gc

    torch.set_num_threads(1)
    args = argparse.Namespace(**json.loads(cfg_json))
    base = _rss("VmRSS")
    module, opts = build_variant(name, args)
    step = _step_fn(module, opts, *_batch(args))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                   # VmHWM := VmRSS now
    for _ in range(3):
        step()
    print(json.dumps({"peak_rss_above_imports": _rss("VmHWM") - base}))


# Timed in two interleaved pairs, each built, checked and freed on its own: a dense-AdamW step streams the
# whole table state (1.5 GB at m = 1M) and leaves the next variant with cold caches and TLB, so interleaving
# the sparse variants with the dense ones measured the dense ones' wake (spreads of 0.3), not the sparse step.
PAIRS = (("literal", "ours"), ("literal_sparse", "ours_sparse"))


def _time_pair(pair: tuple[str, str], args, ids, probe) -> tuple[dict, dict, dict]:
    built = {name: build_variant(name, args) for name in pair}
    with torch.no_grad():
        ref = built[pair[1]][0](ids)
        rel = float((built[pair[0]][0](ids) - ref).abs().max() / ref.abs().max())
        if not rel <= 1e-5:
            raise AssertionError(f"{pair[0]}: output differs from {pair[1]} by {rel:.2e} (relative)")
    steps = {name: _step_fn(module, opts, ids, probe) for name, (module, opts) in built.items()}
    wall, cpu = interleaved(steps, args.reps, warmup=2)
    held = {name: state_bytes(*built[name]) for name in pair}
    return wall, cpu, held


def run(args) -> dict:
    ids, probe = _batch(args)
    load0 = load_average()
    wall, cpu, held = {}, {}, {}
    for pair in PAIRS:
        for acc, part in zip((wall, cpu, held), _time_pair(pair, args, ids, probe)):
            acc.update(part)
    load1 = load_average()
    peak = {name: peak_rss_child(name, args) for name in VARIANTS}
    med = {name: median(cpu[name]) for name in VARIANTS}
    n_tables = args.oe_k * (args.oe_n - 1)
    print(f"\n[2 OE embedding step] m={args.oe_m:,}, n={args.oe_n}, k={args.oe_k} ({n_tables} tables of width "
          f"{args.oe_d // n_tables}), D={args.oe_d}, V={args.oe_vocab}, batch {args.oe_batch}x{args.oe_seq}, "
          f"fwd+bwd+optimizer, 1 thread, {args.reps} interleaved reps, load avg {load0:.1f} -> {load1:.1f}")
    print(f"{'variant':<16}{'CPU ms':>10}{'spread':>8}{'/ literal':>11}{'wall ms':>10}{'state MiB':>11}"
          f"{'peak RSS MiB':>14}")
    for name in VARIANTS:
        print(f"{name:<16}{med[name] * 1e3:>10.1f}{spread(cpu[name]):>8.2f}{med[name] / med['literal']:>11.3f}"
              f"{median(wall[name]) * 1e3:>10.1f}{held[name] / 2**20:>11.0f}{peak[name] / 2**20:>14.0f}")
    ratios = {"best_over_literal": med["ours_sparse"] / med["literal"],
              "dense_over_literal_dense": med["ours"] / med["literal"],
              "sparse_over_literal_sparse": med["ours_sparse"] / med["literal_sparse"],
              "memory_best_over_literal": peak["ours_sparse"] / peak["literal"],
              "memory_dense_over_literal_dense": peak["ours"] / peak["literal"]}
    return {"m": args.oe_m, "n": args.oe_n, "k": args.oe_k, "d_model": args.oe_d, "load": [load0, load1],
            "cpu_ms": {k: v * 1e3 for k, v in med.items()}, "state_bytes": held, "peak_rss_bytes": peak,
            "ratios": ratios}


def add_args(ap) -> None:
    ap.add_argument("--oe-m", type=int, default=1_000_000)
    ap.add_argument("--oe-n", type=int, default=3)
    ap.add_argument("--oe-k", type=int, default=4)
    ap.add_argument("--oe-d", type=int, default=128, help="model width D (tables of width D / (k(n-1)))")
    ap.add_argument("--oe-vocab", type=int, default=50280)
    ap.add_argument("--oe-batch", type=int, default=4)
    ap.add_argument("--oe-seq", type=int, default=512)


if __name__ == "__main__":      # child: python -m bench.peers_oe VARIANT '{"oe_m": ...}'
    _child(sys.argv[1], sys.argv[2])
