"""Follow-up when OE's gain is small or absent: the knobs other implementations report (METHOD.md), seed 0.

    python -m experiments.investigate [--smoke] [--only a,b]
Variants of the main OE model (n = 3, k = 1, m = 65,537): 5x table lr (DeepSeek Engram), RMSNorm on the
n-gram sum and a sqrt(D) output scale (LongCat). Compared with the seed-0 baseline and OE of experiment 1.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.train_runs import RESULTS, ROOT, run_variant
from experiments.variants import OE, VARIANTS

FOLLOW_UPS = {
    "oe_lr5": ("OE, tables at 5x lr", VARIANTS["oe"] + ["optim.oe_lr_multiplier=5"]),
    "oe_norm": ("OE, RMSNorm on n-gram sum", VARIANTS["oe"] + [f"{OE}.output_norm=true"]),
    "oe_scale": ("OE, n-gram sum x sqrt(D)", VARIANTS["oe"] + [f"{OE}.output_scale=11.3"]),
}


def render(d: dict) -> list[str]:
    """Markdown section for docs/results.md (called by experiments.report)."""
    lines = ["## Investigation: OE knobs from other implementations (seed 0)", "",
             f"Command: `{d['command']}`", "", "| variant | val_loss | delta_vs_baseline |", "|---|---|---|"]
    lines += [f"| {r['label']} | {r['val_loss']:.4f} | {r['delta_vs_baseline']:+.4f} |" for r in d["rows"]]
    best = min(d["rows"][2:], key=lambda r: r["val_loss"]) if len(d["rows"]) > 2 else None
    if best is not None:
        lines += ["", f"Best follow-up: {best['label']} ({best['delta_vs_baseline']:+.4f} vs baseline, "
                  f"{best['val_loss'] - d['rows'][1]['val_loss']:+.4f} vs plain OE)."]
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--only", default=",".join(FOLLOW_UPS))
    args = p.parse_args()
    out = args.out or (ROOT / "runs/experiments-smoke/results" if args.smoke else RESULTS)
    base = run_variant("baseline", VARIANTS["baseline"], 0, out, args.smoke)
    rows = [{"label": "baseline", "val_loss": base["final_val_loss"], "delta_vs_baseline": 0.0}]
    plain = run_variant("oe", VARIANTS["oe"], 0, out, args.smoke)
    rows.append({"label": "OE (plain)", "val_loss": plain["final_val_loss"],
                 "delta_vs_baseline": plain["final_val_loss"] - base["final_val_loss"]})
    for name in args.only.split(","):
        label, overrides = FOLLOW_UPS[name]
        rec = run_variant(name, overrides, 0, out, args.smoke)
        rows.append({"label": label, "val_loss": rec["final_val_loss"],
                     "delta_vs_baseline": rec["final_val_loss"] - base["final_val_loss"]})
        print(f"{label}: {rec['final_val_loss']:.4f}", flush=True)
    (out / "investigation.json").write_text(json.dumps(
        {"command": "python -m experiments.investigate", "seeds": [0], "rows": rows,
         "overrides": {k: v[1] for k, v in FOLLOW_UPS.items()}}, indent=1))


if __name__ == "__main__":
    main()
