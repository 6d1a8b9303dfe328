"""`FaultInjection`: make chosen training steps fail, to see the guards at work (`debug=faults`)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch


class FaultInjection(L.Callback):
    """At the global steps in `nan_steps`, the training batch becomes NaN, so the loss and the
    gradient of that step are NaN: the module skips it, and the guard may roll back."""

    def __init__(self, nan_steps: Sequence[int] = ()):
        self.nan_steps = set(nan_steps)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if trainer.global_step in self.nan_steps:
            batch[0] = torch.full_like(batch[0], float("nan"))  # a new tensor: the data stays
