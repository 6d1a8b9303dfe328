"""difftrain-train: train a diffusion model from the Hydra config `conf/train.yaml`.

difftrain-train                               # unet_small on digits, a few CPU minutes
difftrain-train experiment=mnist_small data.dataset.root=../shared/data
difftrain-train -m optimizer.lr=1e-3,2e-4     # a multirun sweep
difftrain-train -m +sweep=regularization      # a ready sweep (conf/sweep/)

Every run writes `summary.json` into its run dir: status (running, finished, diverged, failed),
the swept values, final metrics and the health summary; `difftrain-compare` reads it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from pathlib import Path

import hydra
import lightning as L
import wandb
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from difftrain.callbacks import Evaluate, SampleGrid, Throughput, TrainingDiverged, TrainingHealth
from difftrain.config import CONFIG_DIR
from difftrain.runs import write_summary
from difftrain.runtime import apply_runtime
from difftrain.sweep import Job, current_job, failure_rate

log = logging.getLogger(__name__)


def train(cfg: DictConfig, job: Job | None = None) -> dict[str, float]:
    """Build every part from `cfg`, fit, report where the outputs are, and return the final metrics."""
    apply_runtime(cfg.seed, cfg.num_threads, cfg.float32_matmul_precision)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    job = job or current_job(cfg.task_name)
    out_dir = cfg.paths.output_dir
    write_summary(
        out_dir, status="running", name=job.name, group=job.group, swept=job.swept,
        host=socket.gethostname(), pid=os.getpid(),
    )  # fmt: skip

    # Build the parts: data, model, loggers, callbacks, trainer.
    try:
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        model.save_hyperparameters({"config": resolved}, logger=False)  # rebuilds it from a ckpt
        loggers = [instantiate(c) for c in cfg.logger.values()]
        callbacks = [instantiate(c) for c in cfg.callbacks.values()]
        trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        for logger in loggers:
            logger.log_hyperparams(resolved)
    except Exception as e:
        write_summary(out_dir, status="failed", error=f"{type(e).__name__}: {e}")
        wandb.finish()
        raise

    # Fit; each job of a multirun gets its own W&B run. summary.json says how it ended.
    start, wandb_dir, status, error = time.perf_counter(), None, "failed", None
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        status = "finished"
    except BaseException as e:
        status = "diverged" if isinstance(e, TrainingDiverged) else "failed"
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        health = next((cb.summary for cb in callbacks if isinstance(cb, TrainingHealth)), {})
        evaluation = next((cb.identity for cb in callbacks if isinstance(cb, Evaluate)), {})
        minutes = (time.perf_counter() - start) / 60
        if trainer.is_global_zero:
            write_summary(
                out_dir,
                status=status,
                error=error,
                steps=trainer.global_step,
                minutes=minutes,
                metrics=metrics,
                health={k: v for k, v in health.items() if k != "val_losses"},
                evaluation=evaluation,
            )
        if wandb.run is not None:
            wandb.run.summary["run/status"] = status
            wandb.run.summary.update({f"evaluation/{k}": v for k, v in evaluation.items()})
            wandb_dir = Path(wandb.run.dir).parent
            wandb.finish()

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
    """Hydra entry point; returns `optimized_metric` for sweepers (Optuna).

    In a multirun, a job that diverges (or ends with a non-finite metric) is recorded as such in
    summary.json and W&B and returns the worst value, so the sweep goes on, until more than
    `max_failure_rate` of the sweep's planned jobs have failed: then it raises and the sweep stops.
    """
    job = current_job(cfg.task_name)
    try:
        value = train(cfg, job).get(cfg.optimized_metric)
    except TrainingDiverged as e:
        if job.sweep_dir is None or failure_rate(job) > cfg.max_failure_rate:
            raise
        log.error("%s: diverged (%s); the sweep goes on, this job scores worst", job.name, e)
        return job.worst
    if value is None:
        log.warning(
            "optimized_metric=%s was not logged; sweepers get nothing", cfg.optimized_metric
        )
    elif not math.isfinite(value) and job.sweep_dir is not None:
        write_summary(cfg.paths.output_dir, status="diverged")
        if failure_rate(job) > cfg.max_failure_rate:
            raise TrainingDiverged(f"{cfg.optimized_metric} is {value} and too many jobs failed")
        return job.worst
    return value


if __name__ == "__main__":
    main()
