"""difftrain-train: train a diffusion model from the Hydra config `conf/train.yaml`.

difftrain-train                               # unet_small on digits, a few CPU minutes
difftrain-train experiment=mnist_small data.dataset.root=../shared/data
difftrain-train -m optimizer.lr=1e-3,2e-4     # a multirun sweep
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
import wandb
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from difftrain.callbacks import Evaluate, SampleGrid, Throughput
from difftrain.config import CONFIG_DIR
from difftrain.runtime import apply_runtime

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Build every part from `cfg`, fit, report where the outputs are, and return the final metrics."""
    apply_runtime(cfg.seed, cfg.num_threads, cfg.float32_matmul_precision)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)

    # Build the parts: data, model, loggers, callbacks, trainer.
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    model.save_hyperparameters(
        {"config": resolved}, logger=False
    )  # lets a checkpoint rebuild its model
    loggers = [instantiate(c) for c in cfg.logger.values()]
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for logger in loggers:
        logger.log_hyperparams(resolved)

    # Fit; each job of a multirun gets its own W&B run.
    start, wandb_dir = time.perf_counter(), None
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    finally:
        if wandb.run is not None:
            wandb_dir = Path(wandb.run.dir).parent
            wandb.finish()
    minutes = (time.perf_counter() - start) / 60

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    _report(trainer, minutes, metrics, wandb_dir)
    return metrics


def _report(
    trainer: L.Trainer, minutes: float, metrics: dict[str, float], wandb_dir: Path | None
) -> None:
    """Print where the run's outputs are and how fast it trained."""
    lines = [f"trained {trainer.global_step} steps in {minutes:.1f} min"]
    for cb in trainer.callbacks:
        if isinstance(cb, Throughput):
            lines[0] += f" ({cb.images_per_sec:.0f} training images/s)"
        if isinstance(cb, SampleGrid) and cb.last_path:
            lines.append(f"sample grid:  {cb.last_path}")
        if isinstance(cb, Evaluate) and cb.last:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in cb.last.items() if isinstance(v, float))
            share, setup = cb.seconds / (minutes * 60), cb.setup_seconds
            feature = cb.evaluator.info.get("feature")
            lines.append(
                f"evaluation:   {scores} ({feature} features; {share:.0%} of the time, "
                f"of which {setup:.0f} s one-off setup)"
            )
    if trainer.checkpoint_callback is not None:
        ckpt = trainer.checkpoint_callback
        lines.append(f"checkpoint:   {ckpt.last_model_path or ckpt.best_model_path}")
    if wandb_dir is not None:
        lines.append(f"W&B run:      {wandb_dir}  (upload: wandb sync {wandb_dir})")
    if "val/loss" in metrics:
        lines.append(f"val/loss:     {metrics['val/loss']:.4f}")
    log.info("\n".join(lines))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns val/loss so that sweepers can optimize it."""
    return train(cfg).get("val/loss")


if __name__ == "__main__":
    main()
