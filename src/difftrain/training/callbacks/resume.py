"""`ExactResume`: a resumed run takes the same steps as one that never stopped."""

from __future__ import annotations

import math
import random

import lightning as L
import numpy as np
import torch


def _rng_state() -> dict:
    """Every generator's state, as tensors and plain values (Lightning resumes with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002


class ExactResume(L.Callback):
    """Checkpoints carry the state of every random number generator (torch, CUDA, Python, NumPy).

    On resume it is restored where the uninterrupted run would next draw: at the start of the next
    epoch when the checkpoint closed one (before the epoch's shuffle), else before the next step.
    With the stateful training loader (`torchdata`'s StatefulDataLoader, whose order and position
    Lightning checkpoints), the resumed run draws the same batches, noise, noise levels and dropout
    masks. Epochs cut short by `trainer.limit_train_batches` resume exactly only mid-epoch.
    """

    def __init__(self) -> None:
        self.pending: dict | None = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        at_epoch_end = math.isfinite(steps_per_epoch) and trainer.global_step % steps_per_epoch == 0
        checkpoint["rng_state"] = {**_rng_state(), "at_epoch_end": at_epoch_end}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        self.pending = checkpoint.get("rng_state")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.pending is not None and self.pending["at_epoch_end"]:
            _set_rng_state(self.pending)
            self.pending = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if self.pending is not None:
            _set_rng_state(self.pending)
            self.pending = None
