"""The record a run leaves: `summary.json` (status, swept values, final metrics, health) and
health.json, kept by `RunRecord` around the whole run."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from difftrain.console import quoted

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


@runtime_checkable
class Summarizes(Protocol):
    """A callback that adds to the run's summary: a nested dict, merged with the others'.

    Under "health" go the entries of health.json; under "report" the lines of the end-of-run log.
    """

    def summary(self) -> dict[str, Any]: ...


def write_summary(run_dir: str | Path, **fields: Any) -> Path:
    """Write (or update) `summary.json` in `run_dir`; non-finite floats become null. It is written
    whole or not at all (a temporary file renamed into place), so a kill mid-write leaves the
    previous one; one that cannot be read (cut short by an older difftrain) starts afresh."""
    path = Path(run_dir) / SUMMARY_FILE
    summary = read_summary(run_dir, unreadable="writing it afresh")
    summary.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(_finite(summary), indent=2, default=str))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a clean-up never hides why the write failed
            tmp.unlink(missing_ok=True)
    return path


def read_summary(run_dir: str | Path, unreadable: str = "taking it for empty") -> dict[str, Any]:
    """A run dir's summary.json; {} when there is none, and, with a warning saying `unreadable`
    (what happens instead), when it cannot be read (cut short by a kill or a full disk)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON
        log.warning("%s cannot be read (%s: %s): %s", path, type(e).__name__, e, unreadable)
        return {}
    return summary if isinstance(summary, dict) else {}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def merge(into: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Merge nested dicts: the callbacks' summaries into one."""
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


class RunRecord:
    """The bookkeeping of one training run: a context manager around building and fitting it.

    On entry summary.json says `running`, with the host and process (so a run that is killed
    shows as such). On exit, however the run ended, summary.json gets the status (`finished`,
    `failed`, or an exception's own `run_status`, such as `diverged`), the error, the steps, the
    minutes, the final metrics and what each callback that `Summarizes` reported; health.json
    gets the "health" part; the W&B run gets the status and summary and is finished; and a
    finished run logs where its outputs are. Only rank zero writes.
    """

    def __init__(
        self,
        run_dir: str | Path,
        job: Any,
        optimized_metric: str | None = None,
        resumed: dict[str, Any] | None = None,
    ):
        self.run_dir, self.job, self.optimized_metric = Path(run_dir), job, optimized_metric
        # a resumed run: the checkpoint, its step (where this run starts) and the changed settings
        self.resumed = resumed
        self.start_step = resumed["step"] if resumed else 0
        self.trainer: Any = None
        self.metrics: dict[str, float] = {}
        self.summary: dict[str, Any] = {}
        self.status = "running"
        self._start = 0.0

    def __enter__(self) -> RunRecord:
        if _rank_zero():
            write_summary(
                self.run_dir, status="running", name=self.job.name, group=self.job.group,
                swept=self.job.swept, host=socket.gethostname(), pid=os.getpid(),
                threads=torch.get_num_threads(), resumed=self.resumed,
            )  # fmt: skip
        return self

    def fit(self, trainer: Any, model: Any, datamodule: Any, ckpt_path: str | None) -> None:
        """trainer.fit, timed; the trainer's metrics and callbacks are read at the end."""
        self.trainer, self._start = trainer, time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> bool:
        self.status = "finished" if error is None else getattr(error, "run_status", "failed")
        minutes = (time.perf_counter() - self._start) / 60 if self._start else 0.0
        summary: dict[str, Any] = {}
        if self.trainer is not None:
            self.metrics = {
                k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1
            }
            for callback in self.trainer.callbacks:
                if isinstance(callback, Summarizes):
                    merge(summary, callback.summary())
        value = self.metrics.get(self.optimized_metric or "")
        if error is None and value is not None and not math.isfinite(value):
            self.status = "diverged"  # it ran, but what a sweep optimizes is not a number
        steps = self.trainer.global_step if self.trainer is not None else self.start_step
        health = {"status": self.status, "steps": steps, **summary.get("health", {})}
        self.summary = {**summary, "health": health}
        if _rank_zero():
            write_summary(
                self.run_dir,
                status=self.status,
                error=None if error is None else f"{type(error).__name__}: {error}",
                steps=steps,
                resumed_from_step=self.start_step,
                minutes=minutes,
                metrics=self.metrics,
                **{k: v for k, v in self.summary.items() if k != "health"},
                health={k: v for k, v in health.items() if k != "val_losses"},
            )
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "health.json").write_text(
                json.dumps(_finite(health), indent=2, default=str)
            )
            log.info(
                "health: %s",
                json.dumps({k: v for k, v in health.items() if k != "val_losses"}, default=str),
            )
        wandb_dir = self._finish_wandb(health)
        if error is None and _rank_zero():
            log.info("\n".join(self._report(minutes, steps, wandb_dir)))
        elif self.status == "preempted":  # every process says where it stopped
            log.warning("%s (after %d steps of this run)", error, steps - self.start_step)
        return False

    def _finish_wandb(self, health: dict[str, Any]) -> Path | None:
        import wandb

        if wandb.run is None:
            return None
        wandb.run.summary["run/status"] = self.status
        flat = {
            f"health/{k}": v for k, v in health.items() if isinstance(v, int | float | bool | str)
        }
        identity = self.summary.get("evaluation", {})
        flat.update(
            {f"evaluation/{k}": v for k, v in identity.items() if isinstance(v, int | float | str)}
        )
        wandb.run.summary.update(flat)
        disabled = getattr(wandb.run, "disabled", False)  # WANDB_MODE=disabled: no files at all
        run_dir = Path(wandb.run.dir).parent
        wandb.finish()
        return None if disabled or not run_dir.is_dir() else run_dir

    def _report(self, minutes: float, steps: int, wandb_dir: Path | None) -> list[str]:
        """Where the run's outputs are and how fast it trained."""
        s = self.summary
        lines = [f"trained {steps - self.start_step} steps in {minutes:.1f} min"]
        if self.start_step:
            lines[0] += f" (resumed at step {self.start_step}, now at {steps})"
        if "images_per_sec" in s:
            lines[0] += f", {s['images_per_sec']:.0f} training images/s"
        if "sample_grid" in s:
            lines.append(f"sample grid:  {quoted(s['sample_grid'])}")
        if (evaluation := s.get("evaluation")) and minutes:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in evaluation["scores"].items())
            share = evaluation["seconds"] / (minutes * 60)
            lines.append(
                f"evaluation:   {scores} ({evaluation['feature']} features; {share:.0%} of the "
                f"time, of which {evaluation['setup_seconds']:.0f} s one-off setup)"
            )
        checkpoint = getattr(self.trainer, "checkpoint_callback", None)
        if checkpoint is not None:
            path = checkpoint.last_model_path or checkpoint.best_model_path
            lines.append(f"checkpoint:   {quoted(path)}")
        if wandb_dir is not None:
            lines.append(
                f"W&B run:      {quoted(wandb_dir)}  (upload: wandb sync {quoted(wandb_dir)})"
            )
        if "val/loss" in self.metrics:
            lines.append(f"val/loss:     {self.metrics['val/loss']:.4f}")
        return lines


def _rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
