"""Parallel layout of a run (`parallel:` section): tensor, expert and Over-Encoding table sharding.

Data parallelism is what remains: dp = world_size / tp. Experts are split over ep ranks carved out of the
data-parallel ranks (megatron-core's expert layout), so ep must divide dp. Checks that need the world
size or the model live in pipeline/parallel/process_groups.py (`check_layout`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config.base import check


@dataclass
class ParallelConfig:
    tp: int = 1                                       # tensor-parallel size (megatron-core layers)
    ep: int = 1                                       # expert-parallel size (divides dp and n_experts)
    # ranks over which the OE table rows are split: the data-parallel ranks (paper §3.3) or every rank
    # (also over tp peers, which otherwise each hold the same shard)
    oe_shard_group: Literal["dp", "world"] = "dp"
    # "adamw": AdamW on the local shard, every row every step (paper-faithful);
    # "row_sparse_adam": lazy Adam that updates only the rows looked up in the step
    table_optimizer: Literal["adamw", "row_sparse_adam"] = "adamw"
    # run the sharded OE lookup of the next micro-batch of a step while the current one computes
    # (pipeline/parallel/oe_prefetch.py); the same vectors, one more process group and a worker thread
    oe_prefetch: bool = False

    def validate(self) -> None:
        check(self.tp >= 1, "tp", f"must be >= 1 (got {self.tp})")
        check(self.ep >= 1, "ep", f"must be >= 1 (got {self.ep})")
        check(not (self.tp > 1 and self.ep > 1), "ep",
              f"ep={self.ep} with tp={self.tp} is not supported (experts would see tp copies of each token); "
              "use tp x dp or ep x dp")
