"""Readiness check `grouped_gemm`: the F.grouped_mm expert path of pipeline/model/moe.py equals its
per-expert loop on the device, forward and all gradients (input and the three stacked weights).

Shape: OLMoE-1.3B's experts (D 1024, hidden 512) at 16 experts, 2048 routed rows with uneven counts and one
empty expert (the loop still runs it on 0 rows: zero gradient). --cpu-smoke: D 64, hidden 32, 8 experts.
Both paths are called directly (GroupedExperts._forward_grouped / _forward_loop) in bf16 and in fp32, so
the comparison happens even where the model's dispatcher would not pick grouped_mm (on GPUs it takes it for
bf16 on sm90+ only); which path the dispatcher picks is reported too. A dtype for which grouped_mm raises
on this device is reported (not a failure: the model then uses the loop).
Tolerance: relative Frobenius norm of the difference, per tensor. bf16 5e-3: both paths accumulate in fp32
and round each GEMM output (and the SwiGLU product feeding w_down) to bf16, unit roundoff 3.9e-3, so the
two differ by at most about one rounding per element, ~2e-3 in norm; a wrong group offset or expert order
gives O(1) (negative control: the grouped path with the counts rolled by one expert, i.e. wrong group
offsets, must differ from the loop by more than the tolerance). fp32 1e-5 with TF32 off (summation order).
"""
from __future__ import annotations

from pathlib import Path

from bench.gpu_check import result

TOL = {"bfloat16": 5e-3, "float32": 1e-5}


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def compare(experts, x, counts, dtype) -> dict:
    """Forward and gradients of both paths for one dtype; max relative difference over all tensors."""
    import torch

    outs = {}
    for path in ("grouped", "loop"):
        xi = x.to(dtype).detach().requires_grad_(True)
        for p in experts.parameters():
            p.grad = None
        y = (experts._forward_grouped(xi, counts, dtype) if path == "grouped"
             else experts._forward_loop(xi, counts))
        torch.manual_seed(1)
        y.backward(torch.randn_like(y))
        outs[path] = {"out": y.detach(), "grad_x": xi.grad, **{n: p.grad.clone() for n, p in
                                                              experts.named_parameters()}}
    diffs = {k: _rel(outs["grouped"][k], outs["loop"][k]) for k in outs["loop"]}
    with torch.no_grad():
        wrong = experts._forward_grouped(x.to(dtype), counts.roll(1), dtype)
    return {"max_rel": max(diffs.values()), "per_tensor": diffs,
            "control_wrong_offsets_rel": _rel(wrong, outs["loop"]["out"])}


def run(device: str, smoke: bool, workdir: Path) -> dict:
    import torch

    from pipeline.model.moe import GroupedExperts, _grouped_mm_dtype

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    n_experts, d, hidden, rows = (8, 64, 32, 256) if smoke else (16, 1024, 512, 2048)
    torch.manual_seed(0)
    counts = torch.randint(1, 2 * rows // n_experts, (n_experts,))   # uneven, ~rows in total
    counts[3] = 0                                                    # an empty expert
    numbers = {"shape": {"experts": n_experts, "d_model": d, "hidden": hidden, "rows": int(counts.sum())},
               "tolerance": TOL, "dispatcher_picks": {}, "results": {}}
    ok, lines = True, []
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        experts = GroupedExperts(n_experts, d, hidden).to(device=device, dtype=dtype)
        x = torch.randn(int(counts.sum()), d, device=device)
        c = counts.to(device)
        picked = _grouped_mm_dtype(x.to(dtype), experts.w_gate)
        numbers["dispatcher_picks"][name] = "grouped_mm" if picked is not None else "loop"
        try:
            r = compare(experts, x, c, dtype)
        except (RuntimeError, NotImplementedError) as e:
            numbers["results"][name] = {"error": str(e).splitlines()[0][:200]}
            fallback = "model uses the loop" if picked is None else "BUT the model picks it"
            lines.append(f"{name}: grouped_mm unavailable ({fallback})")
            ok &= picked is None
            continue
        passed = r["max_rel"] <= TOL[name] < r["control_wrong_offsets_rel"]
        ok &= passed
        numbers["results"][name] = {**r, "passed": passed}
        lines.append(f"{name} max rel {r['max_rel']:.1e} (tol {TOL[name]:.0e}, model uses "
                     f"{numbers['dispatcher_picks'][name]})")
    return result("PASS" if ok else "FAIL", f"{device}: " + "; ".join(lines), **numbers)
