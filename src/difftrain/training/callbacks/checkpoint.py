"""`Checkpoint`: Lightning's ModelCheckpoint, but last.ckpt always holds the final step."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """Also writes `last.ckpt` when training ends after the last validation.

    Lightning saves checkpoints at validation only (and `last` at train end only if none was
    saved before), so the steps between the last validation and `max_steps` would be lost.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
