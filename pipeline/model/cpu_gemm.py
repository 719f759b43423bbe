"""fp32 GEMMs on CPUs with AVX-512 through oneDNN, for the code paths that compute their own gradients.

Why: torch sends every fp32 CPU matmul to MKL's sgemm. On AMD CPUs with AVX-512 (Zen 4 / Zen 5, the machines
our CI and benchmarks run on) MKL runs its AVX2 kernels: 85-95 GFLOP/s on one core of the 2.6 GHz EPYC here,
whatever MKL_ENABLE_INSTRUCTIONS says. oneDNN, which torch ships and calls for the linear layers
torch.compile's CPU backend fuses, chooses its kernels from the CPU's ISA flags, not its vendor, and runs
the same GEMMs at 140-210 GFLOP/s (`python bench/cpu_gemm.py` prints both on the shapes the model uses).
The results equal torch.mm to fp32 rounding: one fp32 GEMM with another blocking, about 1e-6 relative
(tests/pipeline/model/test_cpu_gemm.py).

The op used, torch.ops.mkldnn._linear_pointwise, has no autograd formula, so it runs where no gradient is
recorded or where the code computes its gradients itself: the chunked head loss (pipeline/model/
linear_cross_entropy.py), the experts' CPU path (pipeline/model/expert_gemm.py) and the head's logits when
nothing records (generation, evaluation: [4 x 512] x [512 x 50,304] in 7.2 ms against MKL's 12.9). Anywhere
it cannot run (no oneDNN in the torch build, a CPU without AVX-512, another dtype or device, an empty
operand, autograd recording) these functions are torch's matmul.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "onednn", "blas")
_backend = "auto"


def _onednn_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))


_ONEDNN = _onednn_available()


def backend() -> str:
    """The backend fp32 CPU GEMMs take here: 'onednn' or 'blas' (torch's matmul)."""
    if _backend == "auto":
        return "onednn" if _ONEDNN else "blas"
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """Run a block with fp32 CPU GEMMs on `name` ('auto', 'onednn', 'blas'); for tests and benchmarks."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"cpu_gemm backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "onednn" and not _ONEDNN:
        raise RuntimeError("cpu_gemm backend 'onednn': this torch build or CPU has no oneDNN AVX-512 GEMM")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def onednn_applies(*tensors: torch.Tensor) -> bool:
    """Whether GEMMs of these operands run on oneDNN here: fp32 CPU tensors and the backend is oneDNN."""
    return backend() == "onednn" and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w [N, K]^T -> [..., N] (F.linear without bias). Operands may be strided views."""
    if (onednn_applies(x, w) and x.dim() >= 2 and w.dim() == 2 and x.numel() and w.numel()
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), w, None, "none", [], "")
        return y.view(*x.shape[:-1], w.shape[0])
    return F.linear(x, w)


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a [M, K] @ b [K, N] -> [M, N] (into `out` when given)."""
    if not onednn_applies(a, b):
        return torch.mm(a, b, out=out)
    if not a.is_contiguous() and a.T.is_contiguous():
        # oneDNN copies its first operand to contiguous: for a transposed a (a weight gradient's E^T) compute
        # (b^T a^T)^T instead and copy the smaller b^T
        y = linear(b.T.contiguous(), a).T
    else:
        y = linear(a, b.T)
    return y if out is None else out.copy_(y)
