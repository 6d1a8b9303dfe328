"""`ProgressBar`: Lightning's rich progress bar, with epochs counted for step-bounded runs."""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Shows "Epoch 3/7" where Lightning's shows "Epoch 3/-2": difftrain bounds training by
    `max_steps` (max_epochs=-1), so the last epoch is the one that reaches max_steps."""

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
