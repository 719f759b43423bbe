"""Write docs/results.md from the results files (experiments/results/*.json): every number in the page comes
from a run's own output. `python -m experiments.report [--results DIR] [--output FILE]`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.train_runs import RESULTS, ROOT

SCALE = """\
## How the paper's setup was scaled down

| | paper | here |
|---|---|---|
| model (exp 1-4) | OLMoE-1.3B / 7B, D = 1024 / 2048 | OLMoE, 2 layers, D = 128, 4 heads, 8 experts × 128 top-2 |
| data | 500B (ablations 50B) tokens, V = 50,280 | Shakespeare demo shards (2.8M train tokens), V = 8,192 |
| training | cosine, 4M-token batches | {steps} steps × {batch_tokens} tokens ({tokens} tokens), lr 3e-3, cosine, warm-up 12 |
| OE | n = 3, k = 4, m = 3.2M–12.8M | n = 3, k = 1 (tables D/2 wide), m = 65,537 |
| collision | m = 64·V vs 3.2M | m = 8·V = 65,536 vs 65,537 |
| sweep | m = 20K ... 12.8M | m = 1,021 ... 262,147 |
| CFG | GPT-2 12 layers, D 768 / 128, 20M strings × 10 epochs, 10,000 samples | see experiment 5 |

Validation loss is measured on the same fixed validation windows for every run (16 batches × 8 × 128 tokens).
All runs use the project's trainer (`pipeline.train.setup.build_trainer`, fp32, ZeRO-0, one process) except
the CFG models, which use a plain AdamW loop in `experiments/cfg/train.py` around the same model code.
"""


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def direction(delta: float, tol: float = 0.0) -> str:
    return "lower" if delta < -tol else "higher" if delta > tol else "no different"


def exp1(d: dict) -> str:
    rows = {r["variant"]: r for r in d["rows"]}
    oe, ot = rows["oe"], rows["ot"]

    def paired(r):
        sig = r["paired_delta_std"] / max(1, r["seeds"]) ** 0.5          # standard error of the paired mean
        return (f"{r['paired_delta_mean']:+.4f} ± {r['paired_delta_std']:.4f} (seed-paired, "
                + ("beyond" if abs(r["paired_delta_mean"]) > 2 * sig else "within") + " 2 standard errors)")
    se = oe["paired_delta_std"] / max(1, oe["seeds"]) ** 0.5
    verdict = ("reproduces the paper's OE gain (OLMoE-1.3B: 2.554 → 2.472) beyond seed noise"
               if oe["paired_delta_mean"] < -2 * se else
               "points in the direction of the paper's OE gain (2.554 → 2.472) but is not significant over seeds"
               if oe["paired_delta_mean"] < 0 else "does not reproduce the paper's OE gain (2.554 → 2.472)")
    return (f"OE vs baseline: {paired(oe)}; OT vs baseline: {paired(ot)}. At this scale OE {verdict}. "
            "The paper reports OT 2.481 (with MTP-DS alone at 2.555, no better than the baseline): MTP only pays off "
            "for large or long-trained models, so a small or negative OT-minus-OE difference here is expected.")


def exp2(d: dict) -> str:
    r = {x["variant"]: x["val_loss"] for x in d["rows"]}
    checks = [("dropping the 1-gram is worse than the baseline", r["2gram_no_1gram"] > r["baseline"]),
              ("1+2+3 beats 1+2", r["oe"] < r["1+2"]), ("1+2+3 beats 1+3", r["oe"] < r["1+3"]),
              ("every hierarchy with the 1-gram beats the baseline",
               all(r[v] < r["baseline"] for v in ("1+2", "1+3", "oe")))]
    held = [c for c, ok in checks if ok]
    failed = [c for c, ok in checks if not ok]
    return ("Paper (Table 3) orderings that hold here: " + ("; ".join(held) or "none") + ". Not reproduced: "
            + ("; ".join(failed) or "none") + ". val_loss is the seed mean and delta_vs_baseline the seed-paired "
            "difference; differences smaller than the seed-to-seed spread (per_seed) are not significant.")


def exp3(d: dict) -> str:
    r = {x["variant"]: x["val_loss"] for x in d["rows"]}
    gap = r["m_8V"] - r["1+2"]
    return (f"m = 8·V ends {abs(gap):.4f} {direction(gap)} than the coprime m = 65,537 (paper: m = 64·V 2.702 vs "
            f"3.2M 2.678, i.e. the multiple of V loses most of the gain); "
            + ("the direction matches." if gap > 0 else "the paper's direction is not reproduced here."))


def exp4(d: dict) -> str:
    f = d["fit"]
    return (f"Fit: loss = {f['a']:.4f} − {f['b']:.4f}·log10(m), R² = {f['r2']:.3f} (paper, OLMoE-1.3B: "
            f"2.6754 − 0.0256·log10(m)). " + ("Loss falls with table size as in the paper"
                                               if f["b"] > 0 else "Loss does not fall with table size here")
            + (", and the log-linear form fits well." if f["r2"] >= 0.8 else ", but the log-linear form fits poorly "
               "at this training length."))


def exp5(d: dict) -> str:
    row = {(r["size"], r["variant"]): r for r in d["rows"]}
    parts = []
    for size in sorted({s for s, _ in row}):
        base = row.get((size, "1gram"))
        for v, label in (("3gram_in", "3-gram input"), ("3gram_out", "3-gram output")):
            if base is None or (size, v) not in row:
                continue
            r = row[(size, v)]
            dl = r["val_next_token_loss"] - base["val_next_token_loss"]
            parts.append(f"{size}, {label}: accuracy {r['accuracy']:.3f} vs {base['accuracy']:.3f}, held-out "
                         f"next-token loss {dl:+.4f} ({'better' if dl < 0 else 'worse'}), levels parsed "
                         f"{r['mean_parse_depth']:.3f} vs {base['mean_parse_depth']:.3f}")
    scale = "; ".join(
        f"{r['size']}: D = {r['model']['d_model']}, {r['model']['n_layers']} layers, {r['params']:,} params, "
        f"{r['steps']} steps × {r['batch']} windows × {r['seq_len']} tokens from {r['train_strings']:,} strings"
        for r in d["runs"] if r["variant"] == "1gram")
    return ("vs the 1-gram model of the same size — " + "; ".join(parts) + f". Paper: {d['paper_finding']}. "
            "One seed per model.\n\nScaled down (paper: GPT-2 12 layers at "
            f"D = 768 / 128, 20M strings × 10 epochs, batch 512, 10,000 samples): {scale}; "
            f"{d['runs'][0]['samples']:,} samples per model at temperature 1. Vocabulary: 0 = BOS/EOS separator "
            "plus terminals 1-3; 3-gram input = OE n = 3, k = 1, m = 65 (exact: no id is reduced); 3-gram output "
            "= one 64-way head over the next three tokens, first token sampled from its marginal.")


SECTIONS = [
    ("oe_vs_baseline", "1. Baseline vs OE vs OT (equal steps, equal dense compute)",
     ["label", "seeds", "val_loss_mean", "val_loss_std", "delta_vs_baseline", "paired_delta_mean",
      "paired_delta_std", "total_params", "forward_flops_per_token"], exp1),
    ("hierarchy", "2. n-gram hierarchy ablation (paper Table 3)",
     ["label", "seeds", "val_loss", "delta_vs_baseline", "per_seed", "paper_loss", "paper_delta"], exp2),
    ("collision", "3. Collision ablation: m a multiple of V (paper Table 4)",
     ["label", "seeds", "val_loss", "delta_vs_baseline", "per_seed"], exp3),
    ("table_size", "4. Table-size sweep (n = 2, k = 1)", ["m", "table_params", "val_loss", "delta_vs_baseline", "per_seed"],
     exp4),
    ("cfg", "5. Synthetic CFG (cfg3f) generation accuracy",
     ["size", "variant", "params", "steps", "tokens_seen", "val_next_token_loss", "accuracy",
      "mean_parse_depth", "segments_level3", "samples", "median_sample_len"], exp5),
]


def caveats(results: Path) -> list[str]:
    """Limits of the evidence, with the noise level taken from experiment 1's seeds."""
    lines = ["## Caveats", ""]
    path = results / "oe_vs_baseline.json"
    if path.is_file():
        base = next(r for r in json.loads(path.read_text())["rows"] if r["variant"] == "baseline")
        lines.append(f"- Seed noise: the baseline's final validation loss varies with std {base['val_loss_std']:.4f} "
                     "over seeds (init and data order). Experiments 2-4 use two seeds (each seed gives every variant "
                     "the same data order; deltas are seed-paired), so only differences well above that are meaningful.")
    lines += ["- Training is ~10^5 tokens per run, six orders of magnitude below the paper's 50B-500B; the "
              "paper's OE gains grow with training, so small or noisy effects here are not evidence against them.",
              "- CFG: at this budget no model generates fully valid cfg3f strings, so the graded signals (held-out "
              "next-token loss, grammar levels satisfied) carry the comparison; the paper trains 20M strings x 10 epochs.",
              ""]
    return lines


def render(results: Path, img_rel: str) -> str:
    out = ["# Reproducing the Over-Tokenized Transformer at CPU scale",
           "", "Generated by `python -m experiments.report` from `experiments/results/*.json` (do not edit by hand).",
           "Run everything with `bash experiments/run_all.sh` (then this generator).", ""]
    first = results / "runs" / "baseline_s0.json"
    if first.is_file():
        b = json.loads(first.read_text())
        out.append(SCALE.format(steps=b["steps"], batch_tokens=b["tokens"] // b["steps"], tokens=f"{b['tokens']:,}"))
    for name, title, cols, sentence in SECTIONS:
        path = results / f"{name}.json"
        out += [f"## {title}", ""]
        if not path.is_file():
            out += ["Not run yet (no results file).", ""]
            continue
        d = json.loads(path.read_text())
        out += [f"Command: `{d['command']}`" + (f" — seeds {d['seeds']}" if "seeds" in d else ""), "",
                table(d["rows"], cols), ""]
        if "fit" in d:
            out += [f"Fit: a = {d['fit']['a']}, b = {d['fit']['b']}, R² = {d['fit']['r2']}; baseline "
                    f"{d['baseline_val_loss']:.4f}.", ""]
        out += [f"![{name}]({img_rel}/{name}.png)", "", sentence(d), ""]
        notes = results / f"{name}_notes.md"
        if notes.is_file():
            out += [notes.read_text().strip(), ""]
    out += caveats(results)
    extra = results / "investigation.json"
    if extra.is_file():
        from experiments.investigate import render as render_investigation
        out += render_investigation(json.loads(extra.read_text()))
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--output", type=Path, default=ROOT / "docs/results.md")
    args = p.parse_args()
    img_rel = "img" if args.output.resolve().parent == (ROOT / "docs").resolve() else str(args.results / "img")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(args.results, img_rel))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
