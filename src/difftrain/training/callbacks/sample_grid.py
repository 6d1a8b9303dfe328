"""`SampleGrid`: after validation, a grid of EMA samples from a fixed seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from difftrain.training.callbacks.cadence import EveryNValidations


class SampleGrid(L.Callback):
    """Writes `dirpath/step_XXXXXXX.png` (the datamodule draws it: a grid of images, a scatter
    plot of points; for clips an animated `.gif`) and logs it to W&B as `samples`, an image or a
    video (rank zero only).

    A class-conditional model draws classes 0, 1, 2, ... in turn, a model that reads text the
    validation set's first captions (written beside the grid, `step_XXXXXXX.txt`, in grid order),
    guided by `guidance`.
    """

    def __init__(
        self,
        dirpath: str,
        num_samples: int = 64,
        seed: int = 0,
        guidance: float = 1.0,
        every_n_validations: int = 1,
    ):
        if num_samples < 1:
            raise ValueError(f"SampleGrid needs num_samples >= 1, got {num_samples}")
        self.dirpath, self.num_samples, self.seed = Path(dirpath), num_samples, seed
        self.guidance = guidance
        self.cadence = EveryNValidations(every_n_validations)
        self.last_path: Path | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.diffusion.check_guidance(self.guidance)  # before training, not at the first grid

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.cadence.due(trainer):
            return
        # Every process draws (they would wait for rank 0 anyway): sharded weights (FSDP) are
        # gathered from all of them. Rank 0 writes.
        prompts = getattr(trainer.datamodule, "prompts", lambda n: None)(self.num_samples)
        images, nfe = pl_module.generate(
            self.num_samples, seed=self.seed, guidance=self.guidance, prompts=prompts
        )
        if not trainer.is_global_zero:
            return
        path = self.dirpath / f"step_{trainer.global_step:07d}.png"
        self.last_path = trainer.datamodule.save_samples(images, path)
        if prompts:  # what each image was asked to be, in grid order
            path.with_suffix(".txt").write_text("\n".join(prompts) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                caption = [f"step {trainer.global_step}, NFE {nfe}"]
                # An animated grid of clips is a W&B video (the GIF as written), else an image.
                log = logger.log_video if self.last_path.suffix == ".gif" else logger.log_image
                log("samples", [str(self.last_path)], step=trainer.global_step, caption=caption)

    def summary(self) -> dict[str, Any]:
        return {"sample_grid": str(self.last_path)} if self.last_path else {}
