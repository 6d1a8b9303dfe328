"""What a run checks before anything is written: config values, the checkpoint to resume, and
that the output folders can be written. Every problem found is reported at once.

`Preflight` runs the checks as a Hydra callback, before Hydra creates the run dir; `train()`
runs them again (a multirun job, or a direct call) before summary.json or a W&B run exists.
"""

from __future__ import annotations

import difflib
import errno
import fnmatch
import inspect
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf

from difftrain.errors import ConfigError
from difftrain.runs.resume import check_checkpoint, config_keys


@dataclass(frozen=True)
class Range:
    """Allowed values: a number in [low, high] (an end is open where `*_open`), optionally an int."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    nullable: bool = False

    def __str__(self) -> str:
        left = "(" if self.low_open or self.low == -math.inf else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        low, high = (
            f"{v:d}" if self.integer and math.isfinite(v) else f"{v:g}"
            for v in (self.low, self.high)
        )
        text = f"{'an integer' if self.integer else 'a number'} in {left}{low}, {high}{right}"
        return text + (" or null" if self.nullable else "")

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not (isinstance(value, int) or float(value).is_integer()):
            return False
        if math.isnan(value):
            return False
        low_ok = value > self.low if self.low_open else value >= self.low
        high_ok = value < self.high if self.high_open else value <= self.high
        return low_ok and high_ok


POSITIVE = Range(0, low_open=True)
NONNEGATIVE = Range(0)
COUNT = Range(1, integer=True)  # 1, 2, 3, ...
SIZE = Range(0, integer=True)  # 0, 1, 2, ...
FRACTION = Range(0, 1)
PROBABILITY_BELOW_1 = Range(0, 1, high_open=True)

# Ranges of the numeric options, by config key (shell-style patterns).
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1, integer=True, nullable=True),  # what numpy and torch seed with
    "num_threads": Range(1, integer=True, nullable=True),
    "max_failure_rate": FRACTION,
    "data.image_size": COUNT,
    "data.channels": COUNT,
    "data.num_classes": SIZE,
    "data.batch_size": COUNT,
    "data.val_batch_size": COUNT,
    "data.num_workers": SIZE,
    "data.translate": PROBABILITY_BELOW_1,
    "data.num_train": COUNT,
    "data.num_val": COUNT,
    "data.num_modes": COUNT,
    "data.scale": POSITIVE,
    "data.std": POSITIVE,
    "data.dataset.val_fraction": Range(0, 1, low_open=True, high_open=True),
    "net.channels": COUNT,
    "net.num_res_blocks": COUNT,
    "net.head_channels": COUNT,
    "net.norm_groups": COUNT,
    "net.dropout": PROBABILITY_BELOW_1,
    "net.num_classes": SIZE,
    "net.augment_dim": SIZE,
    "net.hidden": COUNT,
    "net.depth": COUNT,
    "net.channel_mult.*": COUNT,
    "schedule.num_timesteps": Range(2, integer=True),
    "schedule.sigma_min": POSITIVE,
    "schedule.sigma_max": POSITIVE,
    "schedule.rho": POSITIVE,
    "objective.sigma_data": POSITIVE,
    "noise_levels.p_std": POSITIVE,
    "noise_levels.std": POSITIVE,
    "noise_levels.num_bins": COUNT,
    "noise_levels.history": COUNT,
    "noise_levels.uniform_prob": FRACTION,
    "noise_levels.start_min": POSITIVE,
    "noise_levels.start_max": POSITIVE,
    "noise_levels.steps": COUNT,
    "weighting.gamma": POSITIVE,
    "weighting.k": POSITIVE,
    "*sampler.steps": COUNT,
    "*sampler.rho": POSITIVE,
    "*sampler.sigma_max": Range(0, low_open=True, nullable=True),
    "*sampler.solver.eta": NONNEGATIVE,
    "*sampler.solver.s_churn": NONNEGATIVE,
    "*sampler.solver.s_noise": POSITIVE,
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NONNEGATIVE,
    "optimizer.eps": POSITIVE,
    "optimizer.momentum": PROBABILITY_BELOW_1,
    "optimizer.alpha": PROBABILITY_BELOW_1,
    "optimizer.betas.*": PROBABILITY_BELOW_1,
    "lr_scheduler.total_iters": SIZE,
    "lr_scheduler.start_factor": Range(0, 1, low_open=True),
    "lr_scheduler.end_factor": Range(0, 1, low_open=True),
    "lr_scheduler.factor": Range(0, 1, low_open=True),
    "lr_scheduler.warmup_steps": SIZE,
    "lr_scheduler.total_steps": COUNT,
    "lr_scheduler.ref_steps": COUNT,
    "lr_scheduler.min_factor": FRACTION,
    "ema.decay": PROBABILITY_BELOW_1,
    "ema.gamma": NONNEGATIVE,
    "model.label_dropout": PROBABILITY_BELOW_1,
    "model.val_sigma_range.*": POSITIVE,
    "model.val_sigma_edges.*": POSITIVE,
    "model.augment.p": FRACTION,
    "model.augment.translate": NONNEGATIVE,
    "model.augment.scale_std": NONNEGATIVE,
    "trainer.max_steps": Range(-1, integer=True),
    "trainer.val_check_interval": POSITIVE,
    "trainer.log_every_n_steps": COUNT,
    "trainer.gradient_clip_val": Range(0, nullable=True),
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.num_nodes": COUNT,
    "callbacks.model_checkpoint.last_every_minutes": Range(0, low_open=True, nullable=True),
    "callbacks.evaluate.num_samples": COUNT,
    "callbacks.evaluate.every_n_validations": COUNT,
    "callbacks.evaluate.guidance": NONNEGATIVE,
    "callbacks.sample_grid.num_samples": COUNT,
    "callbacks.sample_grid.every_n_validations": COUNT,
    "callbacks.sample_grid.guidance": NONNEGATIVE,
    "callbacks.guard.max_nonfinite": COUNT,
    "callbacks.guard.window": COUNT,
    "callbacks.guard.spike_threshold": POSITIVE,
    "callbacks.guard.spike_window": COUNT,
    "callbacks.guard.spike_patience": COUNT,
    "callbacks.guard.snapshot_every": COUNT,
    "callbacks.guard.lr_factor": Range(0, 1, low_open=True),
    "callbacks.guard.max_rollbacks": SIZE,
    "callbacks.health.every_n_steps": COUNT,
    "callbacks.health.trend_fraction": Range(0, 1, low_open=True),
    "callbacks.throughput.window": COUNT,
    "callbacks.posthoc_ema.snapshot_every": COUNT,
    "callbacks.posthoc_ema.sigma_rels.*": Range(0, 0.28, low_open=True, high_open=True),
    "evaluator.classifier_images": COUNT,
    "evaluator.classifier_max_epochs": COUNT,
    "evaluator.min_accuracy": FRACTION,
    "evaluator.coverage_threshold": Range(0, 1, low_open=True),
    "evaluator.kid_subset_size": Range(2, integer=True),
    "evaluator.batch_size": COUNT,
    "evaluator.max_reference": Range(1, integer=True, nullable=True),
    "evaluator.num_modes": COUNT,
    "evaluator.min_share": FRACTION,
    "max_steps": COUNT,
    "extra_steps": COUNT,
    "floor.*": NONNEGATIVE,
    "n": COUNT,
    "batch_size": COUNT,
    "grid_size": SIZE,
    "guidance": NONNEGATIVE,
}


def _leaves(node: DictConfig | ListConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf that is not an interpolation (those are checked where
    they point: model.sampler is sampler)."""
    out = []
    for key in config_keys(node, prefix):
        path = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_interpolation(node, key):
            continue
        try:
            value = node[key]
        except Exception:  # needs Hydra's runtime (output_dir) or a missing value: not numeric
            continue
        if isinstance(value, DictConfig | ListConfig):
            out.extend(_leaves(value, path))
        else:
            out.append((path, value))
    return out


def check_values(cfg: DictConfig) -> list[str]:
    """Every numeric option that is not a number of the allowed kind and range."""
    problems = []
    for key, value in _leaves(cfg):
        rule = next((r for pattern, r in RANGES.items() if fnmatch.fnmatchcase(key, pattern)), None)
        if rule is not None and not rule.allows(value):
            problems.append(f"{key}={value!r}: must be {rule}")
    reported = {p.split("=")[0] for p in problems}
    problems += [p for p in _check_types(cfg) if p.split("=")[0] not in reported]
    max_time = OmegaConf.select(cfg, "trainer.max_time", default=None)
    if isinstance(max_time, str) and not re.fullmatch(r"\d+:\d\d:\d\d:\d\d", max_time.strip()):
        problems.append(
            f"trainer.max_time={max_time!r}: must be DD:HH:MM:SS, e.g. 00:00:15:00 for 15 minutes"
        )
    elif max_time is not None and OmegaConf.select(cfg, "trainer.max_steps") in (None, -1, 0):
        problems.append(
            "trainer.max_steps=-1: a time budget (trainer.max_time) needs the steps the schedules "
            "are written for, which it stretches to the budget, e.g. trainer.max_steps=3000"
        )
    precision = str(OmegaConf.select(cfg, "trainer.precision", default=""))
    if precision in ("16", "16-mixed"):
        problems.append(
            f"trainer.precision={precision}: fp16 needs loss scaling, and difftrain measures, "
            "clips and skips non-finite gradients without it. Fix: trainer.precision=bf16-mixed "
            "(GPUs since Ampere, and CPUs) or 32-true"
        )
    return problems


def _types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (Union and Optional unpacked)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*map(_types, typing.get_args(annotation)))
    return {annotation}


def _numeric(annotation: Any) -> bool:
    """Whether a parameter asks for a number: it admits int or float, and not str."""
    admitted = _types(annotation)
    return bool(admitted & {int, float}) and str not in admitted and Any not in admitted


def _check_types(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Values given to a `_target_`'s number-annotated parameters that are not numbers, and keys
    that its constructor has no parameter for (`+optimizer.lrr=...`)."""
    problems = []
    target = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
    hints: dict[str, Any] = {}
    accepted: dict[str, bool] | None = None  # None: any key (a **kwargs, or an unknown target)
    if isinstance(target, str):
        try:
            obj = get_method(target)
            function = obj.__init__ if inspect.isclass(obj) else obj
            hints = typing.get_type_hints(function)
            accepted = _parameters(function)
        except Exception:  # unresolvable annotations or targets are instantiate's to report
            hints = {}
    for key in config_keys(cfg, prefix) if isinstance(cfg, DictConfig) else []:
        path = f"{prefix}.{key}" if prefix else str(key)
        if accepted is not None and key not in accepted and not str(key).startswith("_"):
            settings = sorted(k for k, default in accepted.items() if default or k in cfg)
            close = difflib.get_close_matches(str(key), settings, n=1)
            hint = f" (did you mean {prefix}.{close[0]}?)" if close else ""
            problems.append(f"{path}: {target} takes no {key!r}{hint}. Its settings: "
                            f"{', '.join(settings)}")  # fmt: skip
            continue
        if OmegaConf.is_interpolation(cfg, key):
            continue
        if OmegaConf.is_missing(cfg, key):
            problems.append(f"{path}=???: has no default, so give it, e.g. {path}=<value>")
            continue
        value = cfg[key]
        if isinstance(value, DictConfig):
            problems += _check_types(value, path)
        elif key in hints and _numeric(hints[key]) and isinstance(value, str | bool):
            problems.append(f"{path}={value!r}: must be a number")
    return problems


def _parameters(function: Any) -> dict[str, bool] | None:
    """The keyword parameters of a callable, each with whether it has a default (one without,
    and not in the config, is the code's to give, as an optimizer's params); None when it takes
    any (**kwargs)."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: p.default is not p.empty
        for p in parameters
        if p.kind in keyword and p.name != "self"
    }


def check_writable(**paths: str | Path | None) -> list[str]:
    """Each folder can be created and written (the first existing ancestor is writable)."""
    problems = []
    for name, path in paths.items():
        if path is None:
            continue
        folder = Path(path).absolute()
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        writable = existing is not None and existing.is_dir()
        if not writable or not os.access(existing, os.W_OK | os.X_OK):
            problems.append(
                f"{name}={path}: {existing} is not a writable folder, so nothing could be saved there. "
                f"Fix: set {name} to a folder you can write"
            )
    return problems


def logger_dirs(cfg: DictConfig) -> dict[str, str]:
    """Each logger's save_dir that is known yet (one inside the run dir is not, before it is
    made), by config key: folders to check like the run's own."""
    dirs = {}
    for name in cfg.get("logger") or {}:
        key = f"logger.{name}.save_dir"
        folder = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if folder:
            dirs[key] = folder
    return dirs


def raise_problems(problems: list[str], what: str = "the configuration") -> None:
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{what} cannot start ({len(problems)} problem(s)):\n{lines}")


class Preflight(Callback):
    """Hydra callback: the checks of a single run, before Hydra creates its run dir.

    Hydra turns a callback's exceptions into warnings, so a run that cannot start exits here,
    printing the problems (exit code 1).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "model" not in config or "trainer" not in config:  # not difftrain-train
            return
        problems = check_values(config)
        run_dir = OmegaConf.select(config, "hydra.run.dir", throw_on_resolution_failure=False)
        problems += check_writable(**{"hydra.run.dir": run_dir}, **logger_dirs(config))
        if not problems:
            ckpt = config.get("ckpt_path")
            problems += check_checkpoint(None if ckpt in (None, "last") else ckpt, config)[0]
        exit_on_bad_input(raise_problems)(problems)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_on_bad_input(raise_problems)(check_launcher(config))


def check_launcher(config: DictConfig) -> list[str]:
    """The SLURM launcher takes its layout from the trainer: both must be whole numbers."""
    target = OmegaConf.select(config, "hydra.launcher._target_", default="") or ""
    if "SlurmLauncher" not in target or "trainer" not in config:
        return []
    return [
        f"trainer.{key}={value!r}: hydra/launcher=slurm needs a whole number of "
        + ("GPUs (tasks) per node" if key == "devices" else "nodes")
        + f", e.g. trainer.{key}=2"
        for key in ("devices", "num_nodes")
        if not (isinstance(value := config.trainer.get(key), int) and value > 0)
    ]


# Errors of the machine, not of difftrain, that the user fixes there: a full disk or quota, a
# read-only file system, a folder without write permission.
MACHINE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def exit_on_bad_input(function: Any) -> Any:
    """For a CLI's main: a ConfigError, or a full disk or a folder that cannot be written
    (MACHINE_ERRORS), exits with its message alone (code 1), no traceback."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ConfigError as e:
            raise SystemExit(f"Error: {e}") from None
        except OSError as e:
            if not isinstance(e, PermissionError) and e.errno not in MACHINE_ERRORS:
                raise
            raise SystemExit(f"Error: {e}") from None

    return wrapper
