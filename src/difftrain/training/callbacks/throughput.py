"""`Throughput`: training images per second by wall clock, excluding validation and sampling."""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from difftrain.training.report import StepReport


class Throughput(L.Callback):
    """Logs `train/images_per_sec` on logging steps, over the last `window` steps;
    `images_per_sec` (summary.json) is the run's average.

    A step's time runs from its start to the next step's start, so it includes data loading and
    every callback. On a GPU the host runs ahead of the device only as far as its queue lets it:
    over a few steps this is the device's rate, with no synchronization to measure it. Time spent
    in validation (and its sampling) is left out.
    """

    def __init__(self, window: int = 20):
        self.window = window
        self.images = self.seconds = 0.0
        self._recent: list[tuple[int, float]] = []
        self._start: float | None = None
        self._images = 0

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        self._close()
        self._start = time.perf_counter()

    def _close(self) -> None:
        """Count the previous step, up to now."""
        if self._start is not None:
            seconds, n = time.perf_counter() - self._start, self._images
            self.images, self.seconds = self.images + n, self.seconds + seconds
            self._recent = [*self._recent[-(self.window - 1) :], (n, seconds)]
            self._start = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        report: StepReport = outputs["report"]
        self._images = report.images
        if report.logs and self._recent:
            recent = sum(k for k, _ in self._recent) / sum(s for _, s in self._recent)
            pl_module.log("train/images_per_sec", recent, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def summary(self) -> dict[str, Any]:
        return {"images_per_sec": self.images_per_sec}
