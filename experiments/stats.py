"""Seed-paired statistics of the experiments: every variant of a seed shares its data order and init seed, so
the difference of two variants at one seed removes most of the seed-to-seed spread, and a paired t-test of those
differences (two-sided, seeds - 1 degrees of freedom) says whether their mean is nonzero."""
from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class Paired:
    mean: float
    std: float
    n: int
    t: float | None
    p: float | None

    def test(self) -> str:
        if self.t is None:
            return f"t undefined, {self.n} seeds"
        p = f"{self.p:.3f}" if self.p >= 1e-3 else f"{self.p:.1e}"
        return f"paired t = {self.t:.2f}, p = {p}, {self.n} seeds"

    def describe(self) -> str:
        return f"{self.mean:+.4f} ± {self.std:.4f}, {self.test()}"


def t_test(mean: float, std: float, n: int) -> Paired:
    from scipy import stats
    if n < 2 or std <= 0:
        return Paired(mean, std, n, None, None)
    t = mean / (std / n ** 0.5)
    return Paired(mean, std, n, t, float(2 * stats.t.sf(abs(t), n - 1)))


def paired(d: dict, a: str, b: str) -> Paired:
    """Variant a minus variant b of one experiment's results (`d["runs"]`), over the seeds both ran."""
    runs = {v: {r["seed"]: r["final_val_loss"] for r in rs} for v, rs in d["runs"].items()}
    diffs = [runs[a][s] - runs[b][s] for s in sorted(runs[a]) if s in runs[b]]
    return t_test(statistics.fmean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else 0.0, len(diffs))
