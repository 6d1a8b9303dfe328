"""difftrain-compare: which setting of a sweep won, and why, on one page.

    difftrain-compare logs/toy2d/multiruns/2026-11-28_00-02-13      # a multirun
    difftrain-compare RUN_DIR RUN_DIR .../wandb/offline-run-*        # any runs, any mix
    difftrain-compare --wandb ENTITY/PROJECT --group regularization-2026-11-28_00-02-13

Writes into --out (default: <the one path>/compare, else ./compare): runs.csv (one row per run:
status, the config keys that differ between runs, final metrics and health), loss_curves.png,
one vs_<key>.png per differing key, and index.html showing them together; prints the table.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from difftrain.runs.read import HEALTH_KEYS, Run, load_runs, read_wandb_api

HIGHER_IS_BETTER = ("precision", "recall", "class_entropy", "hq_share", "modes_captured", "isc",
                    "clip_score")  # fmt: skip


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of `metric` ranks first: these, and every prompt alignment share
    (eval/align_*); losses, FIDs and the rest rank smallest first."""
    name = metric.split("/")[-1]
    return name in HIGHER_IS_BETTER or name.startswith("align_")


IGNORED_PREFIXES = ("paths.", "hydra.", "logger.", "job_name")
SKIPPED_METRICS = ("eval/num_modes", "eval/kid_std")


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Swept keys first, then group choices and config keys whose values differ between runs
    (keys inside a group whose choice differs are left out: the choice says it)."""
    keys = list(dict.fromkeys(k for run in runs for k in run.swept))

    def differs(values: list[Any]) -> bool:
        return len({repr(v) for v in values}) > 1

    groups = {
        k for k in {g for r in runs for g in r.choices} if differs([r.choices.get(k) for r in runs])
    }
    keys += sorted(groups - set(keys))
    for key in sorted({k for r in runs for k in r.config}):
        values = [r.config.get(key) for r in runs]
        inside_group = key.split(".")[0] in groups or any(key.startswith(f"{k}.") for k in keys)
        run_paths = all(isinstance(v, str) and "/" in v for v in values)  # output dirs
        ignored = key.startswith(IGNORED_PREFIXES) or key in keys
        if differs(values) and not (inside_group or run_paths or ignored):
            keys.append(key)
    return keys


def value_of(run: Run, key: str) -> Any:
    """A run's value of a swept key, group choice or config key."""
    if key in run.swept:
        return run.swept[key]
    if key in run.choices:
        return run.choices[key]
    return run.config.get(key)


def label(run: Run) -> str:
    """A short name: the job number of a multirun job, the W&B name of a W&B run."""
    return run.name if run.path.startswith("http") else Path(run.path).name


def metric_keys(runs: Sequence[Run]) -> list[str]:
    keys = {k for r in runs for k in r.metrics if k == "val/loss" or k.startswith("eval/")}
    return sorted(keys - set(SKIPPED_METRICS), key=lambda k: (k != "val/loss", k))


def evaluation_id(run: Run) -> str:
    """What a run's eval/* metrics were measured with (extractor, reference, sampler, n)."""
    e = run.evaluation
    return "/".join(str(e.get(k)) for k in ("extractor", "reference", "sampler", "num_samples"))


def evaluation_ids(runs: Sequence[Run]) -> list[str]:
    """The distinct evaluation setups of the runs that were evaluated."""
    evaluated = [r for r in runs if any(k.startswith("eval/") for k in r.metrics)]
    return sorted({evaluation_id(r) for r in evaluated})


def choose_metric(runs: Sequence[Run], metric: str | None) -> str:
    """The metric that ranks the runs: given, else eval/fid when evaluated, else val/loss.

    eval/* metrics of runs scored with different feature extractors, references or evaluation
    samplers do not compare: asked for, they are refused; by default val/loss ranks instead.
    """
    setups = evaluation_ids(runs)
    if metric:
        if metric.startswith("eval/") and len(setups) > 1:
            raise ValueError(
                f"the runs' {metric} values come from {len(setups)} different evaluation setups "
                f"(feature extractor/reference/sampler/samples: {setups}), so they do not rank. "
                "Compare runs of one setup, re-score them with difftrain-eval, or use "
                "--metric val/loss"
            )
        return metric
    if any("eval/fid" in r.metrics for r in runs) and len(setups) == 1:
        return "eval/fid"
    return "val/loss"


def ranked(runs: Sequence[Run], metric: str) -> list[Run]:
    """Best first; runs without a finite value of the metric (failed, running) last."""
    sign = -1 if higher_is_better(metric) else 1

    def key(run: Run) -> tuple[bool, float]:
        value = run.metrics.get(metric)
        ok = value is not None and math.isfinite(value)
        return (not ok, sign * value if ok else 0.0)

    return sorted(runs, key=key)


def effects(runs: Sequence[Run], keys: Sequence[str], metric: str) -> list[dict[str, Any]]:
    """For each key: the mean metric over finished runs at each of its values, and the spread
    between the best and worst value (which key mattered most)."""
    rows = []
    for key in keys:
        by_value: dict[str, list[float]] = {}
        for run in runs:
            value = run.metrics.get(metric)
            if value is not None and math.isfinite(value):
                by_value.setdefault(str(value_of(run, key)), []).append(value)
        means = {v: mean(xs) for v, xs in by_value.items()}
        if len(means) > 1:
            rows.append(
                {"key": key, "means": means, "spread": max(means.values()) - min(means.values())}
            )
    return sorted(rows, key=lambda r: -r["spread"])


def table_rows(
    runs: Sequence[Run], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    rows, mixed = [], len(evaluation_ids(runs)) > 1
    for run in runs:
        row: dict[str, Any] = {"run": label(run), "status": run.status}
        row.update({k: value_of(run, k) for k in keys})
        row.update({m: run.metrics.get(m) for m in metrics})
        row.update({k: run.health.get(k) for k in HEALTH_KEYS})
        if mixed:  # mark which runs' eval/* values compare
            row["evaluation"] = evaluation_id(run)
        row["path"] = run.path
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    columns = [c for c in rows[0] if c != "path"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row[c]) for c in columns))
    Console(width=max(120, 14 * len(columns))).print(table)


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curves(runs: Sequence[Run], best: Run, path: Path) -> Path:
    """Training loss (smoothed) and validation loss against step, one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        width = 2.5 if run is best else 1.0
        steps, losses = run.curve("train/loss")
        if steps:
            axes[0].plot(
                steps, _smooth(losses, max(1, len(losses) // 30)), lw=width, label=run.name
            )
        steps, losses = run.curve("val/loss")
        if steps:
            axes[1].plot(steps, losses, "o-", lw=width, ms=3, label=run.name)
    for ax, title in zip(axes, ("train/loss (smoothed)", "val/loss"), strict=True):
        ax.set(title=title, xlabel="step", yscale="log")
        ax.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:  # no run validated: no curves to name
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _numeric(values: list[Any]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def plot_versus(runs: Sequence[Run], key: str, metrics: Sequence[str], path: Path) -> Path:
    """Each metric against one hyperparameter: a point per run, the mean per value as a line."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5), squeeze=False)
    raw = [value_of(r, key) for r in runs]
    numbers = _numeric(raw)
    labels = sorted({str(v) for v in raw}, key=lambda s: (_numeric([s]) or [0.0], s))
    xs = numbers if numbers is not None else [labels.index(str(v)) for v in raw]
    for ax, metric in zip(axes[0], metrics, strict=True):
        points = [(x, r.metrics.get(metric)) for x, r in zip(xs, runs, strict=True)]
        points = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
        if points:
            ax.scatter(*zip(*points, strict=True), s=18, alpha=0.7)
            means = {
                x: mean(y for px, y in points if px == x) for x in sorted({x for x, _ in points})
            }
            ax.plot(list(means), list(means.values()), "-", color="C1", lw=1.5, label="mean")
        if numbers is None:
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        elif min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
            ax.set_xscale("log")
        ax.set(xlabel=key, title=metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _verdict(
    runs: Sequence[Run], best: Run, keys: Sequence[str], metric: str, fx: list[dict]
) -> str:
    value = best.metrics.get(metric)
    if value is None or not math.isfinite(value):
        return f"No run has a finite {metric}."
    setting = ", ".join(f"{k}={value_of(best, k)}" for k in keys) or best.name
    lines = [
        f"Best by {metric}: <b>{html.escape(setting)}</b> ({metric} {value:.4g}, {best.path})."
    ]
    for row in fx:
        ordered = ", ".join(f"{v}: {m:.4g}" for v, m in row["means"].items())
        lines.append(
            f"{html.escape(row['key'])} moves mean {metric} by {row['spread']:.3g} ({html.escape(ordered)})"
        )
    setups = evaluation_ids(runs)
    if len(setups) > 1:
        lines.append(
            f"The eval/* metrics come from {len(setups)} different evaluation setups (column "
            "'evaluation'): they do not compare across setups, so val/loss ranks by default."
        )
    bad = [r for r in runs if r.status != "finished"]
    if bad:
        lines.append(
            "Not finished: " + ", ".join(f"{html.escape(r.name)} ({r.status})" for r in bad)
        )
    return "<br>\n".join(lines)


def write_html(
    rows: list[dict[str, Any]], verdict: str, images: list[Path], path: Path, title: str
) -> Path:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in row) + "</tr>\n"
        for row in rows
    )
    figures = "".join(
        f'<figure><img src="{p.name}" style="max-width:100%"><figcaption>{p.stem}</figcaption></figure>\n'
        for p in images
    )
    style = (
        "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n<p>{verdict}</p>\n"
        f"<table><tr>{head}</tr>\n{body}</table>\n{figures}</body></html>\n"
    )
    return path


def compare(
    runs: Sequence[Run], out: Path, metric: str | None = None, title: str = "difftrain runs"
) -> Path:
    """Write the table, plots and page for `runs` into `out`; returns the page."""
    if not runs:
        raise ValueError("no runs to compare")
    out.mkdir(parents=True, exist_ok=True)
    metric = choose_metric(runs, metric)
    keys, metrics = differing_keys(runs), metric_keys(runs)
    order = ranked(runs, metric)
    rows = table_rows(order, keys, metrics)
    write_csv(rows, out / "runs.csv")
    print_table(rows, f"{title}: ranked by {metric}")
    images = [plot_curves(runs, order[0], out / "loss_curves.png")]
    shown = [metric, *[m for m in metrics if m != metric]][:4]
    for key in keys:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
        images.append(plot_versus(runs, key, shown, out / f"vs_{safe}.png"))
    finished = [r for r in order if r.samples and r.metrics.get(metric) is not None]
    if len(finished) > 1:  # what the best and the worst setting draw
        for run, name in ((finished[0], "samples_best.png"), (finished[-1], "samples_worst.png")):
            images.append(Path(shutil.copyfile(run.samples, out / name)))
    verdict = _verdict(runs, order[0], keys, metric, effects(runs, keys, metric))
    return write_html(rows, verdict, images, out / "index.html", title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="difftrain-compare", description=__doc__.split("\n")[0])
    parser.add_argument(
        "paths", nargs="*", help="multirun dirs, run dirs or wandb/offline-run-* dirs"
    )
    parser.add_argument("--out", help="output folder (default: <path>/compare or ./compare)")
    parser.add_argument("--metric", help="rank by this metric (default: eval/fid, else val/loss)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from the W&B API")
    parser.add_argument("--group", help="with --wandb: only this W&B group (a sweep)")
    args = parser.parse_args(_options_as_flags(sys.argv[1:] if argv is None else argv))
    if bool(args.paths) == bool(args.wandb):
        parser.error("give run paths, or --wandb ENTITY/PROJECT (with --group), not both")
    try:
        if args.wandb:
            runs = read_wandb_api(args.wandb, args.group)
        else:  # a run whose summary.json is cut short is left out, with a warning
            runs = load_runs(*args.paths, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:  # a path that is not a run: say so, no traceback
        parser.error(str(e))
    default_out = Path(args.paths[0]) / "compare" if len(args.paths) == 1 else Path("compare")
    page = compare(runs, Path(args.out) if args.out else default_out, args.metric, _title(args))
    print(f"{len(runs)} runs compared: {page}")


def _options_as_flags(argv: Sequence[str]) -> list[str]:
    """out=DIR (and metric=, wandb=, group=), as the other difftrain commands take their options,
    mean --out DIR; an existing path with an = in its name stays a path."""
    flags = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in ("out", "metric", "wandb", "group") and not Path(arg).exists():
            flags += [f"--{key}", value]
        else:
            flags.append(arg)
    return flags


def _title(args: argparse.Namespace) -> str:
    """The W&B group, the sweep's name and launch time, or the one folder's name."""
    if args.group:
        return args.group
    if len(args.paths) != 1:
        return "difftrain runs"
    record = Path(args.paths[0]) / "sweep.json"
    if record.exists():
        sweep = json.loads(record.read_text())
        return f"{sweep['name']}-{sweep['launched']}"
    return Path(args.paths[0]).name


if __name__ == "__main__":
    main()
