"""`ResolutionCurriculum`: train at lower resolutions first, then at the full one."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L


class ResolutionCurriculum(L.Callback):
    """stages: [[step, fraction], ...]; from each step on, training images are downsampled (area)
    to fraction x the net's image size. Validation and sampling stay at full resolution.
    Each resolution must be one the net can halve as often as it has levels (checked at start).
    """

    def __init__(self, stages: Sequence[Sequence[float]]):
        self.stages = sorted((int(step), float(fraction)) for step, fraction in stages)
        if not self.stages or self.stages[0][0] != 0:
            raise ValueError(
                "resolution curriculum stages must start at step 0, e.g. [[0, 0.5], [2000, 1.0]]"
            )
        if any(not 0 < f <= 1 for _, f in self.stages):
            raise ValueError("resolution curriculum fractions must be in (0, 1]")
        self.full = 0

    def resolution(self, step: int) -> int:
        fraction = [f for start, f in self.stages if start <= step][-1]
        return round(self.full * fraction)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.denoiser.net
        self.full = net.image_size
        for step, _ in self.stages:
            net.check_image_size(self.resolution(step))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        pl_module.train_resolution = self.resolution(trainer.global_step)
        pl_module.log("train/resolution", float(pl_module.train_resolution))
