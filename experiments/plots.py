"""Matplotlib figures for docs/results.md (Agg backend: no display on the CPU machines)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curves(path: Path, title: str, series: dict[str, list[list[list[float]]]], ylabel: str = "validation loss"):
    """series: label -> one curve [[step, value], ...] per seed; plots the seed mean with a min-max band."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, runs in series.items():
        steps = [s for s, _ in runs[0]]
        cols = list(zip(*[[v for _, v in r] for r in runs]))
        mean = [sum(c) / len(c) for c in cols]
        ax.plot(steps, mean, marker="o", ms=3, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], alpha=0.2)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend()
    _save(fig, path)


def bars(path: Path, title: str, labels: list[str], values: list[float], errors: list[float] | None = None,
         ylabel: str = "final validation loss", baseline: float | None = None):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, values, yerr=errors, capsize=4, color="tab:blue")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", label="baseline")
        ax.legend()
    lo, hi = min(values), max(values)
    pad = max(hi - lo, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set(ylabel=ylabel, title=title)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    _save(fig, path)


def log_fit(path: Path, title: str, ms: list[int], losses: list[float], a: float, b: float):
    import math

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(ms, losses, "o", label="runs")
    xs = [min(ms) * (max(ms) / min(ms)) ** (i / 50) for i in range(51)]
    ax.semilogx(xs, [a - b * math.log10(x) for x in xs], "-", label=f"fit {a:.4f} - {b:.4f}·log10(m)")
    ax.set(xlabel="table size m (rows)", ylabel="final validation loss", title=title)
    ax.legend()
    _save(fig, path)


def _save(fig, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
