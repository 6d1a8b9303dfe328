"""Reading runs back: finished, failed or still running, from disk or from W&B.

A run is found three ways: a Hydra run dir (`.hydra/` inside), a multirun dir (its job dirs), or a
W&B offline run dir (`offline-run-*`). Each becomes a `Run` with its config, swept values, status,
final metrics and metric history; `difftrain-compare` and the notebooks read runs only through here.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from difftrain.runs.summary import SUMMARY_FILE

log = logging.getLogger(__name__)

HEALTH_KEYS = ("loss_spikes", "nonfinite_steps", "rollbacks", "final_grad_norm")


class UnreadableRun(ValueError):
    """A run dir whose summary.json or health.json cannot be read (cut short, not JSON)."""


def flat_config(config: DictConfig) -> dict[str, Any]:
    """A run's config, flat. An interpolation of one value shows the value it took
    (net.num_classes: 20, not ${model.clusters.k}); one of a whole group (model.net: ${net}), and
    one only Hydra's runtime resolves (paths.output_dir), stays as written."""
    flat = flatten(OmegaConf.to_container(config, resolve=False))
    for key, value in flat.items():
        if not (isinstance(value, str) and "${" in value):
            continue
        try:
            resolved = OmegaConf.select(config, key, throw_on_resolution_failure=True)
            if isinstance(resolved, ListConfig):  # lists are values here, as in flatten
                resolved = OmegaConf.to_container(resolved, resolve=True)
        except Exception:  # a resolver this process lacks (hydra:), or one that reads the disk
            continue
        if not isinstance(resolved, DictConfig):
            flat[key] = resolved
    return flat


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(
            flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}")
        )
    return out


@dataclass
class Run:
    """One training run as read back from disk or from W&B."""

    path: str
    name: str
    status: str  # running, finished, diverged, failed, or what W&B says
    config: dict[str, Any] = field(default_factory=dict)  # flat: "optimizer.lr" -> 0.001
    choices: dict[str, Any] = field(default_factory=dict)  # config group -> option
    swept: dict[str, str] = field(default_factory=dict)  # swept key -> value, in a multirun
    metrics: dict[str, float] = field(default_factory=dict)  # final: val/loss, eval/fid, ...
    health: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)  # extractor, reference, sampler, n
    history: list[dict[str, float]] = field(default_factory=list)  # rows with "step"
    checkpoint: str | None = None
    samples: str | None = None  # the latest sample grid (or scatter plot)

    def curve(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one logged metric."""
        rows = [r for r in self.history if r.get(key) is not None and r.get("step") is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]


def load_runs(*paths: str | Path, warn: Callable[[str], object] = log.warning) -> list[Run]:
    """Every run under `paths` (run dirs, multirun dirs, W&B offline run dirs), in path order.

    A run dir whose summary.json or health.json cannot be read (a write cut short) is left out,
    `warn` naming the file and why; when no run is left, that is an error naming them all.
    """
    runs: list[Run] = []
    unreadable: list[str] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: pass run dirs, multirun dirs or wandb/offline-run-* dirs"
            )
        if not (path / ".hydra").is_dir() and _is_wandb_dir(path):
            runs.append(read_wandb_dir(path))
            continue
        for run_dir in _run_dirs(path):
            try:
                runs.append(read_run_dir(run_dir))
            except UnreadableRun as e:
                unreadable.append(str(e))
                warn(
                    f"{e}: leaving the run {run_dir} out (delete that file to read it from its logs)"
                )
    if unreadable and not runs:
        raise ValueError("no run could be read: " + "; ".join(unreadable))
    return runs


def _is_wandb_dir(path: Path) -> bool:
    return path.name.startswith(("offline-run-", "run-")) and any(path.glob("run-*.wandb"))


def _run_dirs(path: Path) -> list[Path]:
    """The Hydra run dirs at `path`: the path itself, or the jobs of a multirun."""
    if (path / ".hydra").is_dir():
        return [path]
    jobs = sorted((p.parent for p in path.glob("*/.hydra")), key=_job_order)
    if not jobs:
        raise ValueError(
            f"{path} holds no runs: no .hydra/ in it or in its subdirectories, and no run-*.wandb"
        )
    return jobs


def _job_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def read_run_dir(path: Path) -> Run:
    """A Hydra run dir: `.hydra/` config and choices, summary.json, and the CSV or W&B history."""
    config = OmegaConf.load(path / ".hydra" / "config.yaml")
    hydra = OmegaConf.load(path / ".hydra" / "hydra.yaml").hydra
    summary = _read_json(path / SUMMARY_FILE)
    health = _read_json(path / "health.json")  # also written by runs from before summary.json
    wandb_dirs = sorted(path.glob("wandb/offline-run-*")) + sorted(path.glob("wandb/run-*"))
    history = _csv_history(path / "csv" / "metrics.csv")
    if not history and wandb_dirs:
        history = read_wandb_dir(wandb_dirs[-1]).history
    checkpoint = path / "checkpoints" / "last.ckpt"
    grids = sorted(path.glob("samples/step_*.png"))
    return Run(
        path=str(path),
        name=summary.get("name") or path.name,
        status=_status(summary, health),
        config=flat_config(config),
        choices={k: v for k, v in hydra.runtime.choices.items() if not str(k).startswith("hydra")},
        swept=summary.get("swept", {}),
        metrics={
            k: v
            for k, v in (summary.get("metrics") or _last_values(history)).items()
            if v is not None
        },
        health=summary.get("health") or health,
        evaluation=summary.get("evaluation") or {},
        history=history,
        checkpoint=str(checkpoint) if checkpoint.exists() else None,
        samples=str(grids[-1]) if grids else None,
    )


def _read_json(path: Path) -> dict[str, Any]:
    """A run's JSON record; {} when there is none, UnreadableRun when it cannot be read."""
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON (cut short), not UTF-8
        raise UnreadableRun(f"{path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(record, dict):
        raise UnreadableRun(
            f"{path} cannot be read (it holds a {type(record).__name__}, not an object)"
        )
    return record


def _status(summary: dict[str, Any], health: dict[str, Any]) -> str:
    """summary.json's status; "killed" for a run that says running but whose process on this host
    is gone (out of memory, kill -9, a lost node) without writing how it ended."""
    status = summary.get("status") or str(health.get("status", "unknown")).split(":")[0]
    if status == "running" and summary.get("host") == socket.gethostname() and summary.get("pid"):
        try:
            os.kill(summary["pid"], 0)
        except ProcessLookupError:
            return "killed"
        except PermissionError:  # alive, someone else's
            pass
    return status


def _last_values(history: list[dict[str, float]]) -> dict[str, float]:
    last: dict[str, float] = {}
    for row in history:
        last.update(row)
    return last


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _csv_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with path.open() as f:
        return [
            {k: v for k, v in ((k, _number(v)) for k, v in row.items() if v != "") if v is not None}
            for row in csv.DictReader(f)
        ]


def _wandb_run(path: str, name: str, status: str, config: dict, summary: dict, history) -> Run:
    """A Run from what W&B keeps (offline file or API): config, summary and history rows."""
    return Run(
        path=path,
        name=name,
        status=status,
        config=flatten({k: v for k, v in config.items() if k not in ("swept", "job_name")}),
        swept=config.get("swept") or {},
        metrics={k: float(v) for k, v in summary.items() if _is_metric(k, v)},
        health={k[7:]: v for k, v in summary.items() if k.startswith("health/")},
        evaluation={k[11:]: v for k, v in summary.items() if k.startswith("evaluation/")},
        history=[
            {**row, "step": row.get("trainer/global_step", row.get("_step"))} for row in history
        ],
    )


def read_wandb_dir(path: Path) -> Run:
    """A W&B offline run dir (offline-run-*), read without network or account."""
    from difftrain.runs.tracking import read_offline_run

    data = read_offline_run(path)
    config, summary = data["config"], data["summary"]
    status = summary.get("run/status") or summary.get("health/status") or "unknown"
    name = config.get("job_name") or path.name
    return _wandb_run(str(path), name, str(status).split(":")[0], config, summary, data["history"])


def _is_metric(key: str, value: Any) -> bool:
    return (
        key.startswith(("val/", "eval/", "train/"))
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    )


def read_wandb_api(project: str, group: str | None = None) -> list[Run]:
    """The runs of a W&B project (ENTITY/PROJECT), optionally one group, through the public API."""
    import wandb

    filters = {"group": group} if group else None
    runs = []
    for r in wandb.Api().runs(project, filters=filters):
        summary = getattr(r.summary, "_json_dict", r.summary)
        runs.append(_wandb_run(r.url, r.name, r.state, r.config, dict(summary), r.scan_history()))
    if not runs:
        raise ValueError(
            f"W&B project {project} has no runs" + (f" in group {group!r}" if group else "")
        )
    return runs
