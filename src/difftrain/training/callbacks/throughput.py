"""`Throughput`: training images per second, excluding validation and sampling time."""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from difftrain.training.report import StepReport


class Throughput(L.Callback):
    """Logs `train/images_per_sec` over the last `window` steps; `images_per_sec` is the run's average."""

    def __init__(self, window: int = 20):
        self.window = window
        self.images = self.seconds = 0.0
        self._recent: list[tuple[int, float]] = []
        self._start = 0.0

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        report: StepReport = outputs["report"]
        seconds, n = time.perf_counter() - self._start, report.images
        self.images, self.seconds = self.images + n, self.seconds + seconds
        self._recent = [*self._recent[-(self.window - 1) :], (n, seconds)]
        recent = sum(k for k, _ in self._recent) / sum(s for _, s in self._recent)
        pl_module.log("train/images_per_sec", recent, on_step=True, on_epoch=False)

    def summary(self) -> dict[str, Any]:
        return {"images_per_sec": self.images_per_sec}
