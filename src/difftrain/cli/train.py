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
from difftrain.errors import ConfigError
from difftrain.runs.preflight import (
    check_values,
    check_writable,
    exit_on_bad_input,
    logger_dirs,
    raise_problems,
)
from difftrain.runs.resume import check_checkpoint, resume_from, resumed_record
from difftrain.runs.summary import RunRecord
from difftrain.runs.sweep import Job, current_job, sweep_job
from difftrain.runtime import apply_runtime, cpu_bf16_warning, cpu_flags, warn_if_oversubscribed

log = logging.getLogger(__name__)


def train(cfg: DictConfig, job: Job | None = None) -> dict[str, float]:
    """Check, build every part from `cfg`, fit, and return the final metrics (RunRecord reports)."""
    ckpt_path = resume_from(cfg.ckpt_path, Path(cfg.paths.output_dir))
    outputs = {"paths.output_dir": cfg.paths.output_dir, "paths.cache_dir": cfg.paths.cache_dir}
    outputs |= logger_dirs(cfg)  # W&B would quietly fall back to /tmp
    checkpoint_problems, saved = check_checkpoint(ckpt_path, cfg)
    raise_problems(check_values(cfg) + check_writable(**outputs) + checkpoint_problems)
    resumed = resumed_record(ckpt_path, saved, cfg)  # says how its settings differ
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@exit_on_bad_input
@sweep_job
def main(cfg: DictConfig, job: Job) -> dict[str, float]:
    """Hydra entry point: train, and give sweepers (Optuna) `optimized_metric` (`sweep_job`)."""
    return train(cfg, job)


if __name__ == "__main__":
    main()
