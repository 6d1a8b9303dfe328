"""`Checkpoint`: Lightning's ModelCheckpoint, but last.ckpt always holds the final step, and is
rewritten every `last_every_minutes` of training."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """Also writes `last.ckpt` when training ends after the last validation, and every
    `last_every_minutes` between validations (null: only at validations).

    Lightning saves checkpoints at validation only (and `last` at train end only if none was
    saved before), so a kill (out of memory, SIGKILL) before the first validation, or between two
    far apart, would lose every step since. The timed one rewrites last.ckpt only (best.ckpt is
    kept for validated weights). Under DDP the processes agree on when on logging steps (rank
    0's clock), so that the other steps never wait.
    """

    def __init__(self, *args: Any, last_every_minutes: float | None = 10.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if last_every_minutes is not None and not last_every_minutes > 0:
            raise ValueError(
                f"last_every_minutes must be > 0 (or null: no timed checkpoints), got {last_every_minutes}"
            )
        self.last_every = None if last_every_minutes is None else 60.0 * last_every_minutes
        self._saved_at = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._saved_at = time.monotonic()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.last_every is None or not self.save_last:
            return
        if trainer.world_size > 1 and not outputs["report"].logs:
            return
        due = time.monotonic() - self._saved_at >= self.last_every
        if trainer.world_size > 1:
            due = trainer.strategy.broadcast(due)
        if due:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._saved_at = time.monotonic()
