"""Time-budgeted training: step-based schedules that follow the share of a time budget spent.

A recipe is written in steps: `trainer.max_steps`, LR warm-up and decay, the EMA warm-up, the
resolution and noise-level curricula. With `trainer.max_time` (e.g. `00:00:15:00`) too, the run
stops when the time is up (Lightning's `Timer`) instead of at max_steps, and every schedule reads
the *schedule step* `max_steps x elapsed / max_time` instead of the global step. A 15-minute run
then warms up, anneals and ends its curricula within its 15 minutes on any machine: a fast one
takes more, smaller schedule steps per update, a slow one fewer, larger ones.

The elapsed share is read every `every` steps (the logging cadence; under DDP rank 0's clock,
broadcast, so that every process follows the same schedule) and extrapolated in between at the
median pace of the last readings (a validation's pause moves the schedule on at the next reading
but does not throw the extrapolation), never going back.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

import lightning as L
from lightning.pytorch.callbacks import Timer
from torch.optim.lr_scheduler import LRScheduler


def time_budget(trainer: L.Trainer) -> Timer | None:
    """The trainer's Timer when it trains to a time budget (trainer.max_time), else None."""
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


@dataclass
class ScheduleClock:
    """The schedule step of each global step: the global step itself, or under a time budget
    `horizon` x the budget's spent share, read every `every` steps and extrapolated between."""

    horizon: int  # the steps the schedules are written for (trainer.max_steps)
    every: int = 10
    anchor_step: int = -1  # the global step of the last reading
    anchor: float = 0.0  # the schedule step then
    rate: float = 0.0  # schedule steps per global step: the median of the last paces (none yet)
    paces: deque[float] = field(default_factory=lambda: deque(maxlen=5))

    def start(self, trainer: L.Trainer) -> None:
        """Read at the logging cadence; a time budget needs the steps it stretches."""
        self.every = trainer.log_every_n_steps
        if time_budget(trainer) is not None and self.horizon < 1:
            raise ValueError(
                "trainer.max_time needs trainer.max_steps >= 1: the steps the schedules are "
                "written for, which the time budget stretches or shrinks"
            )

    def read(self, trainer: L.Trainer) -> None:
        """Take a reading every `every` steps (the same steps on every process)."""
        timer, step = time_budget(trainer), trainer.global_step
        if timer is None or 0 <= step - self.anchor_step < self.every and self.anchor_step >= 0:
            return
        elapsed = timer.time_elapsed("train")
        fraction = elapsed / max(elapsed + timer.time_remaining("train"), 1e-9)
        now = trainer.strategy.broadcast(self.horizon * fraction)  # rank 0's clock for all
        ahead = 0.0  # where the extrapolation got to: the schedule never goes back from there
        if 0 <= self.anchor_step < step:
            ahead = self.anchor + (step - self.anchor_step) * self.rate
            self.paces.append(max(now - self.anchor, 0.0) / (step - self.anchor_step))
        elif step > 0:  # resumed, or rolled back: the average pace so far
            self.paces = deque([now / step], maxlen=5)
        self.rate = statistics.median(self.paces) if self.paces else 0.0
        self.anchor_step, self.anchor = step, min(float(self.horizon), max(now, ahead))

    def step_at(self, trainer: L.Trainer, step: int | None = None) -> int:
        """The whole schedule step at global `step` (a float's rounding error forgiven)."""
        return int(self.at(trainer, step)[0] + 1e-6)

    def at(self, trainer: L.Trainer, step: int | None = None) -> tuple[float, float]:
        """(schedule step, schedule steps per global step) at global `step` (default: the
        current one); without a time budget (step, 1.0)."""
        step = trainer.global_step if step is None else step
        if time_budget(trainer) is None or self.anchor_step < 0:
            return float(step), 1.0
        return min(
            float(self.horizon), self.anchor + (step - self.anchor_step) * self.rate
        ), self.rate


def go_to_step(scheduler: LRScheduler, step: int) -> None:
    """Set the learning rates to `scheduler`'s at `step` (its closed form where it has one: a
    chainable scheduler's `get_lr` is relative to the last rate)."""
    scheduler.last_epoch = step
    scheduler._get_lr_called_within_step = True  # torch warns when get_lr runs outside step()
    try:
        closed_form = getattr(scheduler, "_get_closed_form_lr", None)
        rates = closed_form() if closed_form is not None else scheduler.get_lr()
    finally:
        scheduler._get_lr_called_within_step = False
    for group, lr in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = lr
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
