"""Rank-0 metric sinks: run_dir/metrics.jsonl (one JSON object per logged step, under the trainer's metric
keys) and TensorBoard (run_dir/tensorboard/<run_dir name>/, tags filed by section: tensorboard_tags.py, plus
the custom-scalars layout: tensorboard_layout.py). On resume from step N, records after N left by the killed
run are dropped from the JSONL file (rewritten atomically) and TensorBoard is told to purge its events after
N, so both show one clean history.

Why the events sit one folder below run_dir/tensorboard: TensorBoard names a run by its event folder relative
to --logdir, so `tensorboard --logdir run_dir/tensorboard` (the command the trainer prints) shows the run as
`<run_dir name>` instead of ".", and `tensorboard --logdir runs/` as `<name>/tensorboard/<name>`."""
from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.data.atomic_io import atomic_write_bytes
from pipeline.train.tensorboard_tags import TagMap

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"


def _json_value(v):
    # JSON has no NaN/inf; keep the record valid and the fact visible.
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def tensorboard_run_dir(run_dir: str | Path) -> Path:
    """The folder holding the run's TensorBoard event files (named after run_dir, see the module docstring)."""
    run_dir = Path(run_dir)
    return run_dir / TB_DIR / run_dir.resolve().name


def truncate_jsonl_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a torn last line of a killed process
            continue
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


class MetricsWriter:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None,
                 tag: TagMap | None = None, layout: dict | None = None):
        """`tag`: metric key -> TensorBoard tag (default: the section rules without the model's depth).
        `layout`: the custom-scalars layout written at start (SummaryWriter.add_custom_scalars form), or None."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            truncate_jsonl_after(self.jsonl_path, resume_step)
        else:
            self.jsonl_path.unlink(missing_ok=True)  # a fresh run (train.resume=never) starts a new history
        self._jsonl = open(self.jsonl_path, "a")
        self.tb = None
        self.tag = tag or TagMap()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tensorboard_run_dir(self.run_dir)),
                                    purge_step=None if resume_step is None else resume_step + 1)
            if layout:
                # Written by every start (also a resume), so a run always carries the layout of its code.
                self.tb.add_custom_scalars(layout)
                self.tb.flush()

    def write(self, step: int, scalars: dict[str, float], histograms: dict | None = None) -> None:
        record = {"step": step, **{k: _json_value(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self.tb is not None:
            for key, value in scalars.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(self.tag(key), value, step)
            for key, counts in (histograms or {}).items():
                self._expert_histogram(self.tag(key), counts, step)
            self.tb.flush()

    def _expert_histogram(self, tag: str, counts, step: int) -> None:
        """Bucket e holds the tokens routed to expert e: TensorBoard draws the load across experts."""
        counts = [float(c) for c in counts]
        ids = range(len(counts))
        self.tb.add_histogram_raw(tag, min=0, max=len(counts) - 1, num=sum(counts),
                                  sum=sum(i * c for i, c in zip(ids, counts)),
                                  sum_squares=sum(i * i * c for i, c in zip(ids, counts)),
                                  bucket_limits=[i + 0.5 for i in ids], bucket_counts=counts, global_step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self.tb is not None:
            self.tb.close()
