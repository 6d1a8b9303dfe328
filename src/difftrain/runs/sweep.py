"""Who a job is in a Hydra multirun: its sweep, the keys swept, and its own values of them.

`RecordSweep` (a Hydra callback, run once by the launching process) writes `sweep.json` into the
sweep dir: the sweep's name, launch time, swept keys and planned number of jobs. Each job reads it
back through `current_job()`, which the configs reach as the resolver `${job:FIELD}` (name, group,
swept). Outside a multirun every field falls back (no name, group = task name, nothing swept), so
the same configs serve single runs.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from difftrain.errors import ConfigError
from difftrain.runs.summary import read_summary, write_summary

log = logging.getLogger(__name__)
SWEEP_FILE = "sweep.json"
FAILED = ("diverged", "failed")


@dataclass(frozen=True)
class Job:
    """One job of a multirun, or a single run (sweep_dir None)."""

    name: str | None = None  # the swept overrides, "ema.decay=0.99,optimizer.lr=0.001"
    group: str | None = None  # the W&B group: "<sweep>-<launch time>", or the task name
    swept: dict[str, str] = field(default_factory=dict)  # swept key -> this job's value
    sweep_dir: Path | None = None
    planned_jobs: int | None = None  # how many jobs the sweep launches (Optuna: n_trials)
    direction: str = "minimize"  # of the sweeper's objective (Optuna's `direction`)

    @property
    def worst(self) -> float:
        """The score of a job that failed: worse than any real one."""
        return -math.inf if "max" in self.direction else math.inf


def _parse(overrides: list[str]) -> list[Any]:
    return OverridesParser.create().parse_overrides(overrides)


def _sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep as launched: `hydra.sweeper.params` from the configs, then the command line."""
    params = config.hydra.sweeper.get("params") or {}
    return [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)


def describe_sweep(config: DictConfig) -> dict[str, Any]:
    """Name, launch time, swept keys (in launch order) and planned jobs of the multirun `config`."""
    swept: dict[str, int | None] = {}
    for override in _parse(_sweep_overrides(config)):
        if override.is_sweep_override():
            values = (
                None if override.is_interval_sweep() else list(override.sweep_string_iterator())
            )
            swept[override.key_or_group] = len(values) if values is not None else None
    n_trials = config.hydra.sweeper.get("n_trials")
    planned = n_trials or (math.prod(n for n in swept.values() if n) if swept else 1)
    choices = config.hydra.runtime.choices
    name = choices.get("sweep") or choices.get("hparams_search") or config.get("task_name")
    return {
        "name": name,
        "launched": time.strftime("%Y-%m-%d_%H-%M-%S"),
        "swept_keys": list(swept),
        "planned_jobs": planned,
        "overrides": _sweep_overrides(config),
    }


class RecordSweep(Callback):
    """Writes `sweep.json` into the sweep dir before the first job starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(describe_sweep(config), indent=2))


def current_job(task_name: str | None = None) -> Job:
    """The running job as seen from inside it (a plain `Job(group=task_name)` outside a multirun)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return Job(group=task_name)
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(hydra_cfg.sweep.dir)
    record = sweep_dir / SWEEP_FILE
    if record.exists():
        sweep = json.loads(record.read_text())
    else:  # launched without RecordSweep: the keys swept in the configs are all we know
        params = hydra_cfg.sweeper.get("params") or {}
        overrides = _parse([f"{k}={v}" for k, v in params.items()])
        keys = [o.key_or_group for o in overrides if o.is_sweep_override()]
        sweep = {"name": task_name, "launched": sweep_dir.name, "swept_keys": keys}
    values = {
        o.key_or_group: o.get_value_element_as_str() for o in _parse(list(hydra_cfg.overrides.task))
    }
    swept = {k: values[k] for k in sweep["swept_keys"] if k in values}
    return Job(
        name=",".join(f"{k}={v}" for k, v in swept.items()) or None,
        group=f"{sweep['name']}-{sweep['launched']}",
        swept=swept,
        sweep_dir=sweep_dir,
        planned_jobs=sweep.get("planned_jobs"),
        direction=str(hydra_cfg.sweeper.get("direction", "minimize")),
    )


def failure_rate(job: Job) -> float:
    """Share of the sweep's planned jobs whose summary.json says they diverged or failed."""
    if job.sweep_dir is None:
        return 0.0
    failed = 0
    for path in job.sweep_dir.glob("*/summary.json"):
        failed += read_summary(path.parent).get("status") in FAILED
    return failed / max(job.planned_jobs or 1, 1)


class SweepStopped(RuntimeError):
    """More than `max_failure_rate` of a sweep's planned jobs failed or diverged."""


def sweep_job(task: Callable[[DictConfig, Job], dict[str, float]]) -> Callable[[DictConfig], Any]:
    """A training task as a sweep's job: returns `optimized_metric` (for Optuna).

    In a multirun, a job that diverges (or ends with a non-finite metric), or fails (a value its
    parts refuse, out of memory, ...), is recorded as such in summary.json and returns the worst
    value, so the sweep goes on, until more than `max_failure_rate` of the sweep's planned jobs
    have failed: then it raises and the sweep stops. A single run raises as it is.
    """

    @functools.wraps(task)
    def job_of_sweep(cfg: DictConfig) -> float | None:
        job = current_job(cfg.task_name)
        try:
            value = task(cfg, job).get(cfg.optimized_metric)
        except Exception as e:
            if job.sweep_dir is None:
                raise
            status = getattr(e, "run_status", "failed")  # TrainingDiverged's: diverged
            if status == "failed" and read_summary(cfg.paths.output_dir).get("status") != status:
                # it failed before its RunRecord began (a value the checks refuse): record it here
                write_summary(cfg.paths.output_dir, status=status, name=job.name, group=job.group,
                              swept=job.swept, error=f"{type(e).__name__}: {e}")  # fmt: skip
            if failure_rate(job) > cfg.max_failure_rate:
                raise
            log.error(
                "%s: %s (%s: %s); the sweep goes on, this job scores worst", job.name, status,
                type(e).__name__, e, exc_info=status == "failed" and not isinstance(e, ConfigError),
            )  # fmt: skip
            return job.worst
        if value is None:
            log.warning(
                "optimized_metric=%s was not logged; sweepers get nothing", cfg.optimized_metric
            )
        elif not math.isfinite(value) and job.sweep_dir is not None:
            if failure_rate(job) > cfg.max_failure_rate:
                raise SweepStopped(f"{cfg.optimized_metric} is {value} and too many jobs failed")
            return job.worst
        return value

    return job_of_sweep


def _resolve_job(key: str, *, _root_: DictConfig) -> Any:
    job = current_job(_root_.get("task_name"))
    return job.swept if key == "swept" else getattr(job, key)


OmegaConf.register_new_resolver("job", _resolve_job, replace=True)
