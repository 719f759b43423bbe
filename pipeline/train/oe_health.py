"""Over-Encoding health metrics (log.oe_health): are the hashed n-gram tables used, do they contribute, do
they learn? Recorded on logged steps, per table t of the stacked table (pipeline/model/over_encoding.py):

    oe/rows_touched/table_<t>      fraction of table t's rows looked up by at least one training step since
                                   this process started (a resumed run counts again from its restart step);
    oe/rows_touched                the same over all tables' rows;
    oe/ngram_rms_ratio             RMS of the n-gram part as it enters the input mean (after the optional
                                   output norm and scale) / RMS of the 1-gram token embedding;
    oe/ngram_rms_ratio/table_<t>   RMS of table t's projection W_t e_t on the same scale (its share of the
                                   summed projection times oe/ngram_rms_ratio; without output_norm exactly
                                   RMS(output_scale W_t e_t) / RMS(token embedding));
    oe/grad_norm/table_<t>         L2 norm of table t's gradient at the optimizer step, before clipping;
    oe/grad_norm                   the same over the whole stacked table.

Costs and where they run:
- every training step: each lookup sets a bool per row it reads (`touched_rows`, one byte per LOCAL row: the
  owner of a row-sharded table marks the rows it serves to any rank, so no ids travel for this);
- logged steps only: the forward's norm probe (one more small GEMM per table, the projection's FLOPs once
  more), the per-table gradient sums at the accumulation boundary (Callback.on_gradients), and ONE
  all-reduce over the world of [touched rows per table, gradient sum of squares per table, norm sums].
Rows are counted once per distinct element: a shard held by `copies` ranks (tp peers with
parallel.oe_shard_group=dp) divides its counts by `copies` before the sum, like external_params.py does for
the clipping norm. The norm sums are summed over every rank's tokens (tp peers repeat the same tokens, which
leaves the ratios unchanged).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from pipeline.train.callbacks.callback import Callback

if TYPE_CHECKING:
    from pipeline.train.trainer import StepResult, Trainer


class TableShard:
    """Which global rows of the stacked table this rank holds, and how the tables split them."""

    def __init__(self, table_rows: list[int], start: int, end: int, copies: int):
        self.table_rows, self.start, self.end, self.copies = list(table_rows), start, end, copies
        offsets = [0]
        for rows in self.table_rows:
            offsets.append(offsets[-1] + rows)
        self.offsets = offsets      # table t: global rows [offsets[t], offsets[t + 1])

    def local_slices(self) -> list[slice]:
        """Per table, its rows within this shard as a slice of the local rows (possibly empty)."""
        out = []
        for a, b in zip(self.offsets[:-1], self.offsets[1:]):
            lo = max(a, self.start)
            hi = max(min(b, self.end), lo)
            out.append(slice(lo - self.start, hi - self.start))
        return out

    def per_table_sums(self, row_values: torch.Tensor) -> torch.Tensor:
        """[local rows] -> [tables]: the sum over each table's local rows, fp64, divided by `copies`."""
        return torch.stack([row_values[s].double().sum() for s in self.local_slices()]) / self.copies

    def sparse_per_table_sums(self, local_rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Values at (coalesced) local rows -> per-table sums, fp64, divided by `copies`."""
        bounds = torch.tensor(self.offsets[1:-1], device=local_rows.device)
        table = torch.bucketize(local_rows + self.start, bounds, right=True)
        out = torch.zeros(len(self.table_rows), dtype=torch.float64, device=values.device)
        return out.index_add_(0, table, values.double()) / self.copies


def gradient_sq_per_table(grad: torch.Tensor | None, shard: TableShard) -> torch.Tensor:
    """Sum of squares of the table gradient per table (dense or sparse COO gradient), fp64 [tables]."""
    if grad is None:
        return torch.zeros(len(shard.table_rows), dtype=torch.float64)
    if grad.is_sparse:
        grad = grad.coalesce()
        return shard.sparse_per_table_sums(grad.indices()[0], grad.values().double().square().sum(1))
    return shard.per_table_sums(grad.double().square().sum(1))


def health_metrics(counts: torch.Tensor, shard: TableShard) -> dict[str, float]:
    """The all-reduced vector [touched per table, grad sq per table, tok sq, ngram sq, summed sq, per-table
    sq] -> the metrics (names in the module docstring)."""
    t = len(shard.table_rows)
    touched, grad_sq, norms = counts[:t], counts[t:2 * t], counts[2 * t:]
    tok_sq, ngram_sq, summed_sq, table_sq = norms[0], norms[1], norms[2], norms[3:]
    out: dict[str, float] = {}
    for i in range(t):
        out[f"oe/rows_touched/table_{i}"] = float(touched[i]) / shard.table_rows[i]
    out["oe/rows_touched"] = float(touched.sum()) / sum(shard.table_rows)
    if float(tok_sq) > 0:
        ratio = (ngram_sq / tok_sq).sqrt()
        out["oe/ngram_rms_ratio"] = float(ratio)
        share = (table_sq / summed_sq.clamp(min=1e-300)).sqrt() * ratio
        for i in range(t):
            out[f"oe/ngram_rms_ratio/table_{i}"] = float(share[i])
    for i in range(t):
        out[f"oe/grad_norm/table_{i}"] = float(grad_sq[i].sqrt())
    out["oe/grad_norm"] = float(grad_sq.sum().sqrt())
    return out


class OEHealthCallback(Callback):
    # Before validation (50), whose eval-mode forwards must find the norm probe switched off, and before the
    # metrics sink (-50) writes the record. After the speed meter (100), so the reduction is not step time.
    priority = 60

    def __init__(self) -> None:
        self.oe = None
        self.shard: TableShard | None = None
        self._grad_sq: torch.Tensor | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        oe = getattr(trainer.engine.module, "over_encoding", None)
        if oe is None:
            return
        table = oe.table
        param = next((p for p in (trainer.external.params if trainer.external is not None else [])
                      if p.kind == "oe_table"), None)
        start, end, copies = (param.start, param.end, param.copies) if param is not None else (0, table.shape[0], 1)
        self.oe, self.shard = oe, TableShard(oe.table_rows, start, end, copies)
        oe.touched_rows = torch.zeros(table.shape[0], dtype=torch.bool, device=table.device)

    def pre_step(self, trainer: "Trainer") -> None:
        if self.oe is not None:
            self.oe.norm_probe = [] if trainer.metrics_due else None
            self._grad_sq = None

    def on_gradients(self, trainer: "Trainer") -> None:
        if self.oe is not None:
            self._grad_sq = gradient_sq_per_table(self.oe.table.grad, self.shard)

    def on_step_end(self, trainer: "Trainer", result: "StepResult") -> None:
        if self.oe is None:
            return
        probes, self.oe.norm_probe = self.oe.norm_probe, None
        if result.metrics is None:
            return
        t = len(self.shard.table_rows)
        device = self.oe.touched_rows.device
        touched = self.shard.per_table_sums(self.oe.touched_rows).to(device)
        grad_sq = self._grad_sq.to(device) if self._grad_sq is not None else torch.zeros(t, dtype=torch.float64,
                                                                                          device=device)
        norms = (torch.stack(probes).sum(0).to(device) if probes
                 else torch.zeros(3 + t, dtype=torch.float64, device=device))
        counts = torch.cat([touched, grad_sq, norms])
        if trainer.dist.world_size > 1:
            # Every rank calls this on the same (logged) steps: the metrics schedule is the same everywhere.
            comm = trainer.dist.device if trainer.dist.backend == "nccl" else torch.device("cpu")
            counts = counts.to(comm)
            dist.all_reduce(counts)
        for name, value in health_metrics(counts.cpu(), self.shard).items():
            trainer.record_metric(name, value)

    def close(self, trainer: "Trainer") -> None:
        if self.oe is not None:
            self.oe.touched_rows = self.oe.norm_probe = None
