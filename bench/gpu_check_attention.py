"""Readiness check `attention`: which SDPA backend the model's attention actually runs, causal and with
document masks, and which backends could run it.

Shape: OLMoE-1.3B's attention (D 1024, 16 heads of 64) on 2 x 2048 tokens under bf16 autocast, as the
trainer runs it (--cpu-smoke: D 64, 4 heads, 2 x 128 tokens). Two settings:
  causal    one document per row: the model calls SDPA with is_causal=True (no mask tensor);
  doc_mask  several packed documents per row: a bool [B, 1, S, S] mask (pipeline.model.attention).
"used" is read off the profiler: the aten op SDPA dispatches to (_scaled_dot_product_flash_attention,
_efficient_attention, _cudnn_attention, _attention_math, _flash_attention_for_cpu) during one forward +
backward of pipeline.model.attention.Attention. "can run" forces each backend with
torch.nn.attention.sdpa_kernel on the same q, k, v and mask (forward + backward) and times it.
PASS: the default call ran and its backend was identified. The doc_mask result matters for memory and
speed: flash attention takes no arbitrary mask, so document masking falls to memory-efficient, cuDNN or
math (O(S^2) per head).
"""
from __future__ import annotations

import time
from pathlib import Path

from bench.gpu_check import result

BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
# aten op name fragment -> backend (checked in this order: "flash_attention_for_cpu" before "flash")
OP_BACKENDS = (("cudnn_attention", "cudnn"), ("efficient_attention", "memory-efficient"),
               ("flash_attention_for_cpu", "flash (cpu)"), ("flash_attention", "flash"),
               ("attention_math", "math"))


def backend_of(op_names: set[str]) -> str:
    for fragment, backend in OP_BACKENDS:
        if any(fragment in name for name in op_names):
            return backend
    return "unknown"


def inputs(device: str, smoke: bool):
    import torch

    from pipeline.model.attention import Attention, document_attention_mask
    from pipeline.model.rope import RotaryEmbedding

    d, heads, batch, seq = (64, 4, 2, 128) if smoke else (1024, 16, 2, 2048)
    torch.manual_seed(0)
    attn = Attention(d, heads).to(device)
    x = torch.randn(batch, seq, d, device=device)
    rope = RotaryEmbedding(d // heads, 10000.0)(seq, torch.device(device), torch.float32)
    doc_starts = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    doc_starts[:, 0] = True
    doc_starts[:, seq // 3] = doc_starts[:, seq // 2] = True       # 3 documents per row
    masks = {"causal": None, "doc_mask": document_attention_mask(doc_starts)}
    return attn, x, rope, masks, (d, heads, batch, seq)


def used_backend(attn, x, rope, mask, device: str) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:      # aten ops are recorded on the host side
        with torch.autocast(device, dtype=torch.bfloat16):
            y = attn(x, rope, mask)
        y.float().square().mean().backward()
    return backend_of({e.name for e in prof.events()})


def forced(q, k, v, mask, device: str) -> dict[str, dict]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for name in BACKENDS:
        qi, ki, vi = (t.detach().requires_grad_(True) for t in (q, k, v))
        try:
            with sdpa_kernel([getattr(SDPBackend, name)]):
                for _ in range(2):                                   # second call timed (first compiles/plans)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    y = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, is_causal=mask is None)
                    y.float().sum().backward()
                    if device == "cuda":
                        torch.cuda.synchronize()
            out[name] = {"ok": True, "fwd_bwd_ms": (time.perf_counter() - t0) * 1e3}
        except RuntimeError as e:
            out[name] = {"ok": False, "error": str(e).splitlines()[0][:160]}
    return out


def run(device: str, smoke: bool, workdir: Path) -> dict:
    import torch

    attn, x, rope, masks, shape = inputs(device, smoke)
    d, heads, batch, seq = shape
    numbers = {"shape": {"d_model": d, "heads": heads, "batch": batch, "seq": seq, "dtype": "bfloat16"}}
    ok, parts = True, []
    for setting, mask in masks.items():
        used = used_backend(attn, x, rope, mask, device)
        q, k, v = (torch.randn(batch, heads, seq, d // heads, device=device, dtype=torch.bfloat16)
                   for _ in range(3))
        can = forced(q, k, v, mask, device)
        numbers[setting] = {"used": used, "mask": None if mask is None else list(mask.shape), "backends": can}
        ok &= used != "unknown"
        runs = ",".join(n.split("_")[0].lower() for n, r in can.items() if r["ok"])
        parts.append(f"{setting}: uses {used} (can run: {runs})")
    return result("PASS" if ok else "FAIL", f"{device}: " + "; ".join(parts), **numbers)
