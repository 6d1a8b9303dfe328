"""`FaultInjection`: make chosen training steps fail, to see the guards at work (`debug=faults`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import lightning as L
import torch


class FaultInjection(L.Callback):
    """At the global steps in `nan_steps`, the training batch becomes NaN, so the loss and the
    gradient of that step are NaN: the module skips it, and the guard may roll back.

    At `signal_step` the process sends itself `signal_name` (SIGTERM, as a scheduler would) as the
    step starts: the preemption handling then saves and stops after that step. Under DDP, `ranks`
    limits the faults to those processes (None: all).
    """

    def __init__(
        self,
        nan_steps: Sequence[int] = (),
        signal_step: int | None = None,
        signal_name: str = "SIGTERM",
        ranks: Sequence[int] | None = None,
    ):
        self.nan_steps, self.signal_step = set(nan_steps), signal_step
        self.signal = signal.Signals[signal_name]
        self.ranks = None if ranks is None else set(ranks)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if self.ranks is not None and trainer.global_rank not in self.ranks:
            return
        if trainer.global_step in self.nan_steps:
            batch[0] = torch.full_like(batch[0], float("nan"))  # a new tensor: the data stays
        if trainer.global_step == self.signal_step:
            os.kill(os.getpid(), self.signal)
