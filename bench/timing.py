"""Shared timing harness for the bench/ scripts on a CPU shared with other jobs.

Robustness rules (the 2-core machine often runs at load 5-8 from other processes):
- variants are interleaved A B C A B C ... so a burst of foreign load hits every variant alike;
- each variant's figure is the MEDIAN of its repetitions (robust to single slow outliers);
- ratios are always formed from numbers measured in the same run;
- the 1-minute load average is sampled before and after and printed next to the results.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable


def load_average() -> float:
    return os.getloadavg()[0]


def interleaved(variants: dict[str, Callable[[], None]], reps: int, warmup: int = 1
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run every variant `warmup` times, then `reps` rounds of one call each, in the given order.
    Returns (wall seconds, process CPU seconds) of every timed call per variant. With one intra-op thread the
    CPU time excludes the time this process sat descheduled behind foreign load, so it is the steadier
    figure on a shared machine (memory-bandwidth contention still shows in both)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """Relative inter-quartile-ish spread: (max - min) / median of the middle half, for the table."""
    s = sorted(xs)
    q = max(1, len(s) // 4)
    mid = s[q:len(s) - q] or s
    return (mid[-1] - mid[0]) / statistics.median(s)


def write_json(path: str | None, record: dict) -> None:
    """Print one JSON line (always) and also write it to `path` when given."""
    line = json.dumps(record, sort_keys=True)
    print("JSON " + line)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(line + "\n")
