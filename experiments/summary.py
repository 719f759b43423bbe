"""The paper's headline claims, one row each, with what the experiments here measured and a verdict, for the top of
docs/results.md. A claim is "reproduced" when its seed-paired difference has the paper's sign at p < 0.05 (or,
for the CFG, beyond 2 binomial standard errors at every seed); "direction only" when the sign matches without
that; otherwise "not reproduced". Each row's details are in the experiment's own section."""
from __future__ import annotations

import json
from pathlib import Path

from experiments.stats import Paired, paired

ALPHA = 0.05


def _verdict(r: Paired, want_negative: bool) -> str:
    right = r.mean < 0 if want_negative else r.mean > 0
    if right and r.p is not None and r.p < ALPHA:
        return "reproduced"
    return "direction only" if right else "not reproduced"


def _p(r: Paired) -> str:
    return f"{r.mean:+.3f} (p = {r.p:.1e}, {r.n} seeds)" if r.p is not None else f"{r.mean:+.3f} ({r.n} seeds)"


def rows(results: Path) -> list[tuple[str, str, str, str]]:
    load = {n: json.loads((results / f"{n}.json").read_text()) for n in
            ("oe_vs_baseline", "hierarchy", "collision", "table_size", "cfg") if (results / f"{n}.json").is_file()}
    out = []
    if "oe_vs_baseline" in load:
        d = load["oe_vs_baseline"]
        for v, claim, paper in (("oe", "OE beats the baseline (Table 1)", "2.554 → 2.472 (-0.082)"),
                                ("ot", "OT (OE + MTP) beats the baseline", "2.554 → 2.481 (-0.073)")):
            r = paired(d, v, "baseline")
            out.append((claim, paper, _p(r), _verdict(r, True)))
    if "hierarchy" in load:
        d = load["hierarchy"]
        for a, b, claim, paper, neg in (
                ("oe", "1+2", "1+2+3-gram beats 1+2-gram (Table 3)", "2.670 → 2.667 (-0.003)", True),
                ("2gram_no_1gram", "baseline", "dropping the 1-gram hurts (Table 3)", "2.714 → 2.785 (+0.071)", False)):
            r = paired(d, a, b)
            out.append((claim, paper, _p(r), _verdict(r, neg)))
    if "collision" in load:
        r = paired(load["collision"], "m_64V", "1+2")
        out.append(("m a multiple of V loses OE's gain (Table 4)", "2.702 vs 2.678 (+0.024)", _p(r),
                    _verdict(r, False)))
    if "table_size" in load:
        f, n = load["table_size"]["fit"], len(load["table_size"]["rows"])
        ok = f["b"] > 0 and f["r2"] >= 0.9
        out.append(("loss falls log-linearly in table size m", "-0.0256 per decade of m",
                    f"-{f['b']:.4f} per decade, R² = {f['r2']:.3f} ({n} m values, 3 seeds each)",
                    "reproduced" if ok else "direction only" if f["b"] > 0 else "not reproduced"))
    if "cfg" in load:
        out += _cfg_rows(load["cfg"])
    return out


def _cfg_rows(d: dict) -> list[tuple[str, str, str, str]]:
    from experiments.report import exp5_verdicts, output_trend     # the CFG's rules live with its section
    verdicts, sizes, _ = exp5_verdicts(d)
    inp = [verdicts.get((s, "3gram_in")) for s in sizes]
    outp = [verdicts.get((s, "3gram_out")) for s in sizes]
    trend = output_trend(outp)
    return [
        ("CFG: 3-gram input helps", "both sizes", ", ".join(f"{s} {v}" for s, v in zip(sizes, inp)),
         "reproduced" if all(v == "helps" for v in inp) else "direction only" if "helps" in inp else "not reproduced"),
        ("CFG: 3-gram output hurts the small model, helps the large", "small hurts, large helps (2.4M / 85M params)",
         ", ".join(f"{s} {v}" for s, v in zip(sizes, outp))
         + f" ({min(r['params'] for r in d['rows']):,}-{max(r['params'] for r in d['rows']):,} params)",
         "reproduced" if trend == "flip" else "direction only (no sign flip at these sizes)" if trend == "rising"
         else "not reproduced"),
    ]


def render(results: Path) -> list[str]:
    found = rows(results)
    if not found:
        return []
    lines = ["## Findings at a glance", "",
             "| paper's claim | paper | here | verdict |", "|---|---|---|---|"]
    lines += [f"| {c} | {p} | {h} | {v} |" for c, p, h, v in found]
    return lines + ["", "Differences are seed-paired (variant minus reference at each seed). Reproduced: the paper's "
                    "sign at p < 0.05 (CFG: beyond 2 binomial standard errors with the same sign at every seed); "
                    "direction only: the paper's sign without that. Details in each experiment's section below.", ""]
