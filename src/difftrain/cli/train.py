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
import re
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from difftrain.config import CONFIG_DIR
from difftrain.runs.preflight import (
    ConfigError,
    changed_settings,
    check_checkpoint,
    check_values,
    check_writable,
    exit_on_bad_input,
    logger_dirs,
    raise_problems,
)
from difftrain.runs.summary import RunRecord, read_summary, write_summary
from difftrain.runs.sweep import Job, current_job, failure_rate
from difftrain.runtime import apply_runtime, cpu_bf16_warning, cpu_flags, warn_if_oversubscribed
from difftrain.training.callbacks.guard import TrainingDiverged
from difftrain.training.callbacks.preemption import Preempted

log = logging.getLogger(__name__)


def train(cfg: DictConfig, job: Job | None = None) -> dict[str, float]:
    """Check, build every part from `cfg`, fit, and return the final metrics (RunRecord reports)."""
    ckpt_path = resume_from(cfg.ckpt_path, Path(cfg.paths.output_dir))
    outputs = {"paths.output_dir": cfg.paths.output_dir, "paths.cache_dir": cfg.paths.cache_dir}
    outputs |= logger_dirs(cfg)  # W&B would quietly fall back to /tmp
    checkpoint_problems, saved = check_checkpoint(ckpt_path, cfg)
    raise_problems(check_values(cfg) + check_writable(**outputs) + checkpoint_problems)
    resumed = None
    if ckpt_path is not None:
        changes = changed_settings(saved.config, cfg)
        resumed = {"from": ckpt_path, "step": saved.step, "changed": changes}
        if changes:
            log.warning("%s", resume_note(ckpt_path, saved.step, changes))
    apply_runtime(cfg.seed, cfg.num_threads, cfg.float32_matmul_precision)
    if cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available():
        warn_if_oversubscribed()
        if message := cpu_bf16_warning(str(cfg.trainer.precision), cpu_flags()):
            log.warning(message)
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    job = job or current_job(cfg.task_name)
    with RunRecord(cfg.paths.output_dir, job, cfg.optimized_metric, resumed) as record:
        latent = {}
        if cfg.get("autoencoder") is not None:  # one frozen copy: the data encodes, samples decode
            autoencoder = build(cfg.autoencoder)
            latent = {"autoencoder": autoencoder}
            cache = Path(cfg.paths.cache_dir, "latents")
            datamodule = build(cfg.data, autoencoder=autoencoder, latent_cache=cache)
        else:
            datamodule = build(cfg.data)
        model = build(cfg.model, **latent)
        model.save_hyperparameters({"config": config}, logger=False)  # rebuilds it from a ckpt
        loggers = [build(c) for c in cfg.logger.values()]
        callbacks = [build(c) for c in cfg.callbacks.values() if c is not None]  # null: off
        budget = {"max_steps": -1} if cfg.trainer.get("max_time") else {}  # time, not steps
        trainer: L.Trainer = build(
            cfg.trainer, logger=loggers or False, callbacks=callbacks, **budget
        )
        for logger in loggers:
            logger.log_hyperparams(config)
        record.fit(trainer, model, datamodule, ckpt_path)
    return record.metrics


def build(config: DictConfig, **kwargs: Any) -> Any:
    """instantiate(config); a value that one of the parts refuses (its ValueError, such as widths
    that norm_groups does not divide) becomes a ConfigError naming the key, printed without a
    traceback. Other errors (bugs) keep theirs."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as e:
        if not isinstance(e.__cause__, ValueError):
            raise
        key = re.search(r"full_key: (\S+)", str(e))
        raise ConfigError(f"{key.group(1) if key else 'a part'}: {e.__cause__}") from e


def resume_note(ckpt_path: str, step: int, changes: dict[str, tuple[Any, Any]]) -> str:
    """The warning that lists how a resumed run's settings differ from its checkpoint's."""
    lines = [
        f"resuming {ckpt_path} (step {step}) with {len(changes)} setting(s) other than it was "
        f"trained with; each takes effect from step {step} on:"
    ]
    for key, (theirs, ours) in changes.items():
        kept = key.startswith("model.clusters")  # fitted once: the checkpoint carries them
        note = "  (not applied: the checkpoint's fitted clusters are kept)" if kept else ""
        lines.append(f"  {key}: {theirs} -> {ours}{note}")
    return "\n".join(lines)


def resume_from(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint to resume: `ckpt_path`, or for "last" the run dir's own latest one."""
    if ckpt_path != "last":
        return ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("ckpt_path=last: resuming from %s", last)
        return str(last)
    log.warning(
        "ckpt_path=last: no checkpoint in %s yet, so training starts from scratch", last.parent
    )
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@exit_on_bad_input
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns `optimized_metric` for sweepers (Optuna).

    In a multirun, a job that diverges (or ends with a non-finite metric), or fails (a value its
    parts refuse, out of memory, ...), is recorded as such in summary.json and W&B and returns the
    worst value, so the sweep goes on, until more than `max_failure_rate` of the sweep's planned
    jobs have failed: then it raises and the sweep stops.
    """
    job = current_job(cfg.task_name)
    try:
        value = train(cfg, job).get(cfg.optimized_metric)
    except Preempted as e:
        log.warning("%s", e)
        raise  # exits with 143, so that the scheduler requeues the job
    except TrainingDiverged as e:
        if job.sweep_dir is None or failure_rate(job) > cfg.max_failure_rate:
            raise
        log.error("%s: diverged (%s); the sweep goes on, this job scores worst", job.name, e)
        return job.worst
    except Exception as e:
        if job.sweep_dir is None:
            raise
        if read_summary(cfg.paths.output_dir).get("status") != "failed":
            # it failed before its RunRecord began (a value the checks refuse): record it here
            write_summary(cfg.paths.output_dir, status="failed", name=job.name, group=job.group,
                          swept=job.swept, error=f"{type(e).__name__}: {e}")  # fmt: skip
        if failure_rate(job) > cfg.max_failure_rate:
            raise
        log.error(
            "%s: failed (%s: %s); the sweep goes on, this job scores worst",
            job.name, type(e).__name__, e, exc_info=not isinstance(e, ConfigError),
        )  # fmt: skip
        return job.worst
    if value is None:
        log.warning(
            "optimized_metric=%s was not logged; sweepers get nothing", cfg.optimized_metric
        )
    elif not math.isfinite(value) and job.sweep_dir is not None:
        if failure_rate(job) > cfg.max_failure_rate:
            raise TrainingDiverged(f"{cfg.optimized_metric} is {value} and too many jobs failed")
        return job.worst
    return value


if __name__ == "__main__":
    main()
