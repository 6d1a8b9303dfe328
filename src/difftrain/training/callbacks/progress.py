"""`ProgressBar`: Lightning's rich progress bar, with epochs counted for step-bounded runs and
the training loss of the last logging step."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from difftrain.training.report import StepReport


class ProgressBar(RichProgressBar):
    """Shows "Epoch 3/7" where Lightning's shows "Epoch 3/-2": difftrain bounds training by
    `max_steps` (max_epochs=-1), so the last epoch is the one that reaches max_steps.

    The loss shown is read on logging steps only (`StepReport.logs`): a bar that showed every
    step's loss would make the host wait for the device at every step.
    """

    loss: float | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        report: StepReport = outputs["report"]
        if report.logs:
            self.loss = report.loss.item()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        return metrics if self.loss is None else {"train/loss": f"{self.loss:.4g}", **metrics}

    def _get_train_description(self, current_epoch: int) -> str:
        trainer, text = self.trainer, f"Epoch {current_epoch}"
        batches = trainer.num_training_batches
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            text += f"/{trainer.max_epochs - 1}"
        elif trainer.max_steps > 0 and batches and math.isfinite(batches):
            steps_per_epoch = max(1, batches // trainer.accumulate_grad_batches)
            text += f"/{math.ceil(trainer.max_steps / steps_per_epoch) - 1}"
        if len(self.validation_description) > len(text):  # as Lightning's: no flicker
            text = f"{text:{len(self.validation_description)}}"
        return text
