"""In-loop zero-shot evaluation (the paper's "downstream" metric) as a trainer callback.

Runs pipeline/eval's multiple-choice scoring on the live model every `eval.downstream_every` steps and at the
last step, adds `downstream/<task>` and `downstream` (five-task mean) to the step's metrics (so they reach
TensorBoard and metrics.jsonl), and writes the full JSON to run_dir/downstream/step_N.json on rank 0.
When the forward runs collectives (row-sharded OE lookups, expert parallelism) every rank scores every
question in the same batches, because those collectives must be entered in lockstep; otherwise the questions
are split over the ranks.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from typing import TYPE_CHECKING

from pipeline.data.atomic_io import atomic_write_bytes
from pipeline.data.tokenizer import load_tokenizer
from pipeline.train.callbacks.callback import Callback

if TYPE_CHECKING:
    from pipeline.train.trainer import StepResult, Trainer


class DownstreamEvalCallback(Callback):
    priority = 40

    def __init__(self, eval_cfg, tokenizer_record: dict, model_vocab_size: int, run_dir: str, rank: int,
                 forward_has_collectives: bool):
        self.cfg, self.run_dir, self.rank = eval_cfg, Path(run_dir), rank
        self.split_ranks = not forward_has_collectives
        # Resolved once, up front: a missing or changed tokenizer is an error before training starts.
        self.tokenizer = load_tokenizer(None, tokenizer_record, model_vocab_size)

    def due(self, trainer: "Trainer") -> bool:
        every = self.cfg.downstream_every
        return bool(every) and (trainer.step % every == 0 or trainer.is_last_step)

    def needs_metrics(self, trainer: "Trainer") -> bool:
        return self.due(trainer)

    def on_step_end(self, trainer: "Trainer", result: "StepResult") -> None:
        if not self.due(trainer):
            return
        from pipeline.eval.downstream import evaluate_tasks
        model = trainer.engine.module
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        res = evaluate_tasks(model, self.tokenizer, list(self.cfg.downstream_tasks), self.cfg.downstream_limit,
                             split_ranks=self.split_ranks)
        model.train(was_training)
        for task, entry in res["tasks"].items():
            trainer.record_metric(f"downstream/{task}", float(entry["primary"]))
        if "downstream" in res:
            trainer.record_metric("downstream", float(res["downstream"]))
        trainer.record_metric("downstream_time_s", time.perf_counter() - t0)
        if self.rank == 0:
            out = self.run_dir / "downstream" / f"step_{trainer.step}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out, json.dumps({"step": trainer.step, "limit": self.cfg.downstream_limit, **res},
                                               indent=1).encode())
