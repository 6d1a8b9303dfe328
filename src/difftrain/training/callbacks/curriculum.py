"""`ResolutionCurriculum`: train at lower resolutions first, then at the full one."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L


class ResolutionCurriculum(L.Callback):
    """stages: [[step, fraction], ...]; from each step on, training images are downsampled (area)
    to fraction x the data's image size, by the datamodule (`set_train_resolution`). Steps are
    the module's schedule steps (under a time budget, shares of it). Validation and sampling stay
    at full resolution. Each resolution must be one the net can take (checked
    when fitting starts).
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
        data = trainer.datamodule
        self.full = data.image_size
        for step, _ in self.stages:
            pl_module.check_shape(data.media.shape_at(data.sample_shape, self.resolution(step)))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.datamodule.set_train_resolution(self.resolution(pl_module.schedule_step()))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if outputs["report"].logs:  # logging a number copies it to the device: a sync
            pl_module.log("train/resolution", float(batch[0].shape[-1]))
        trainer.datamodule.set_train_resolution(self.resolution(pl_module.schedule_step()))
