"""The callback interface of the Trainer: periodic and side work around the training loop.

Hooks, in the order the Trainer calls them:
    on_train_start(trainer)              once, after a resume has restored the trainer's state
    needs_metrics(trainer) -> bool       before each step: whether this step's metrics must be collected
    pre_step(trainer)                    before each optimizer step (trainer.step is already the new step)
    on_gradients(trainer)                steps whose metrics are collected, every rank, at the accumulation
                                         boundary: the step's gradients are complete (the external ones
                                         reduced) and not yet clipped or applied; collectives are allowed
    on_step_end(trainer, result)         after each optimizer step
    on_train_end(trainer)                once, after the last step (not after an error)
    on_error(trainer, error)             when the loop raises; must not run collectives (a peer may be gone)
    close(trainer)                       always last, after on_train_end or on_error: release files/writers
Callbacks run in descending `priority` (ties: the order they were given), so e.g. the speed meter reads the
clock before validation runs, and validation results exist before the metrics sink writes the step.
A callback adds numbers to the current step's record with `trainer.record_metric(name, value)`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.train.trainer import StepResult, Trainer


class Callback:
    priority: int = 0

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def needs_metrics(self, trainer: "Trainer") -> bool:
        """True on the steps where this callback uses or adds to the step's metrics (they are then collected)."""
        return False

    def pre_step(self, trainer: "Trainer") -> None: ...
    def on_gradients(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer", result: "StepResult") -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...
    def on_error(self, trainer: "Trainer", error: BaseException) -> None: ...
    def close(self, trainer: "Trainer") -> None: ...


def ordered(callbacks: list[Callback]) -> list[Callback]:
    """Descending priority; a stable sort keeps the given order among equals."""
    return sorted(callbacks, key=lambda cb: -cb.priority)
