"""Follow-up when OE's gain is small or absent: the knobs other implementations report (METHOD.md), seed 0.

    python -m experiments.investigate [--smoke] [--only a,b]
Variants of the main OE model (n = 3, k = 1, m = 65,537): 5x table lr (DeepSeek Engram), RMSNorm on the
n-gram sum and a sqrt(D) output scale (LongCat), and baseline vs OE trained 3x longer. Seed 0, compared with the
seed-0 run of the same length (paired: same init seed and data order).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.train_runs import RESULTS, ROOT, run_variant
from experiments.variants import OE, VARIANTS

LONG = ["train.max_steps=360"]                # 3x the tokens of experiments 1-4 (same warm-up, cosine to 360)
# name -> (label, overrides, name of its reference baseline run)
FOLLOW_UPS = {
    "oe_lr5": ("OE, tables at 5x lr", VARIANTS["oe"] + ["optim.oe_lr_multiplier=5"], "baseline"),
    "oe_norm": ("OE, RMSNorm on n-gram sum", VARIANTS["oe"] + [f"{OE}.output_norm=true"], "baseline"),
    "oe_scale": ("OE, n-gram sum x sqrt(D)", VARIANTS["oe"] + [f"{OE}.output_scale=11.3"], "baseline"),
    "baseline_long": ("baseline, 3x steps", VARIANTS["baseline"] + LONG, None),
    "oe_long": ("OE, 3x steps", VARIANTS["oe"] + LONG, "baseline_long"),
}


def render(d: dict) -> list[str]:
    """Markdown section for docs/results.md (called by experiments.report)."""
    lines = ["## Investigation: training length and OE knobs from other implementations (seed 0)", "",
             f"Command: `{d['command']}`", "",
             "| variant | steps | val_loss | reference | delta vs reference |", "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['steps']} | {r['val_loss']:.4f} | {r['reference']} | "
              + (f"{r['delta']:+.4f}" if r["delta"] is not None else "") + " |" for r in d["rows"]]
    return lines + ["", "Deltas are paired (same seed and data order as the reference run).", ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--only", default=",".join(FOLLOW_UPS))
    args = p.parse_args()
    out = args.out or (ROOT / "runs/experiments-smoke/results" if args.smoke else RESULTS)
    recs = {"baseline": run_variant("baseline", VARIANTS["baseline"], 0, out, args.smoke),
            "oe": run_variant("oe", VARIANTS["oe"], 0, out, args.smoke)}
    labels = {"baseline": ("baseline", None), "oe": ("OE (plain)", "baseline")}
    for name in args.only.split(","):
        label, overrides, ref = FOLLOW_UPS[name]
        recs[name] = run_variant(name, overrides, 0, out, args.smoke)
        labels[name] = (label, ref)
        print(f"{label}: {recs[name]['final_val_loss']:.4f}", flush=True)
    rows = []
    for name, (label, ref) in labels.items():
        loss = recs[name]["final_val_loss"]
        rows.append({"variant": name, "label": label, "steps": recs[name]["steps"], "val_loss": loss,
                     "reference": ref or "", "delta": (loss - recs[ref]["final_val_loss"]) if ref in recs else None})
    out.mkdir(parents=True, exist_ok=True)
    (out / "investigation.json").write_text(json.dumps(
        {"command": "python -m experiments.investigate", "seeds": [0], "rows": rows,
         "overrides": {k: v[1] for k, v in FOLLOW_UPS.items()},
         "curves": {k: r["val_curve"] for k, r in recs.items()}}, indent=1))


if __name__ == "__main__":
    main()
