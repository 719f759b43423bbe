"""fp32 GEMM throughput on this CPU: torch's matmul (MKL's sgemm on x86 builds) vs oneDNN through
pipeline/model/cpu_gemm.py, on the shapes the model runs (the d512 peer shape of bench/peers_hf.py, batch
4 x 128 = 512 tokens), one intra-op thread, process CPU time, medians of interleaved repetitions.

    .venv/bin/python bench/cpu_gemm.py [--reps 10] [--json runs/bench/cpu_gemm.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.timing import interleaved, median, write_json  # noqa: E402
from pipeline.model import cpu_gemm  # noqa: E402
from pipeline.model.expert_gemm import expert_linear  # noqa: E402

T, D, C, E, H = 512, 512, 2048, 64, 256       # tokens, d_model, head chunk columns, experts, expert hidden


def cases():
    """name -> (GFLOP, torch's way, our way); each pair computes the same product."""
    g = torch.Generator().manual_seed(0)
    h, w_c, e = torch.randn(T, D, generator=g), torch.randn(C, D, generator=g), torch.randn(T, C, generator=g)
    sq, dw = torch.randn(2048, 2048, generator=g), torch.empty(C, D)
    counts = torch.bincount(torch.randint(0, E, (T * 8,), generator=g), minlength=E)
    offs, sizes = counts.cumsum(0).to(torch.int32), counts.tolist()
    x, w_e, dy = torch.randn(T * 8, D, generator=g), torch.randn(E, H, D, generator=g), torch.randn(T * 8, H, generator=g)
    head = 2 * T * D * C / 1e9
    experts = 2 * T * 8 * D * H / 1e9
    return {
        "square 2048^3": (2 * 2048 ** 3 / 1e9, lambda: sq @ sq, lambda: cpu_gemm.mm(sq, sq)),
        "head chunk: logits h W_c^T": (head, lambda: h @ w_c.T, lambda: cpu_gemm.linear(h, w_c)),
        "head chunk: dh += E_c W_c": (head, lambda: e @ w_c, lambda: cpu_gemm.mm(e, w_c)),
        "head chunk: dW_c = E_c^T h": (head, lambda: torch.mm(e.T, h, out=dw),   # into the gradient, as the loss
                                       lambda: cpu_gemm.mm(e.T, h, out=dw)),
        "experts: x_g w_g^T (64 groups)": (experts, lambda: F.grouped_mm(x, w_e.transpose(1, 2), offs=offs),
                                           lambda: expert_linear(x, w_e, offs, sizes)),
        "experts: dy_g w_g (64 groups)": (experts, lambda: F.grouped_mm(dy, w_e, offs=offs),
                                          lambda: torch.cat([cpu_gemm.mm(a, b) for a, b in
                                                             zip(dy.split(sizes), w_e.unbind(0))])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"backend here: {cpu_gemm.backend()} (CPU capability {torch.backends.cpu.get_cpu_capability()})")
    if cpu_gemm.backend() != "onednn":
        print("oneDNN's GEMM does not apply on this machine: nothing to compare")
        return
    rows = {}
    print(f"{'shape':<34}{'torch GFLOP/s':>15}{'oneDNN GFLOP/s':>16}{'speedup':>9}")
    for name, (gflop, theirs, ours) in cases().items():
        torch.testing.assert_close(ours(), theirs(), rtol=1e-4, atol=1e-3)
        _, cpu = interleaved({"torch": theirs, "onednn": ours}, args.reps, warmup=1)
        t, o = median(cpu["torch"]), median(cpu["onednn"])
        rows[name] = {"gflop": gflop, "torch_gflops": gflop / t, "onednn_gflops": gflop / o, "speedup": t / o}
        print(f"{name:<34}{gflop / t:>15.1f}{gflop / o:>16.1f}{t / o:>9.2f}")
    write_json(args.json, {"bench": "cpu_gemm", "reps": args.reps, "rows": rows})


if __name__ == "__main__":
    main()
