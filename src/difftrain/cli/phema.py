"""difftrain-phema: post-hoc EMA checkpoints of any relative length from a run's snapshots.

    difftrain-phema run_dir=logs/mnist_edm/runs/<run> sigma_rel=0.05,0.1,0.15 [step=4000 | at=0.3]

Writes <run_dir>/checkpoints/phema-<sigma_rel>.ckpt for each (phema-<sigma_rel>-step<N>.ckpt with
step=N: the average as it was at step N, e.g. a weaker guide for autoguidance): last.ckpt with
its EMA weights replaced by the reconstruction, which difftrain-sample and difftrain-eval accept.
at=F picks N as the snapshot nearest to that fraction of the run, which names the same point of a
time-budgeted run on a fast machine and a slow one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from difftrain.files import save_atomically
from difftrain.runs.pretrained import EMA_PREFIX, load_checkpoint
from difftrain.training.posthoc_ema import reconstruct

USAGE = "usage: difftrain-phema run_dir=PATH sigma_rel=0.05,0.1[,...] [step=N | at=FRACTION]"


def phema(
    run_dir: str | Path,
    sigma_rels: list[float],
    step: int | None = None,
    at: float | None = None,
) -> list[Path]:
    """Reconstruct and write one checkpoint per sigma_rel; returns their paths.

    `step` is the step whose average to write (default: the last); `at` chooses it as the snapshot
    step nearest to that fraction of the last one.
    """
    run_dir = Path(run_dir)
    files = sorted((run_dir / "phema").glob("phema-*.pt"))
    if not files:
        raise FileNotFoundError(
            f"no post-hoc EMA snapshots in {run_dir / 'phema'}: train with callbacks=phema "
            "(or add the posthoc_ema callback) to record them"
        )
    snapshots = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    if at is not None:
        last = max(s["step"] for s in snapshots)
        step = min((s["step"] for s in snapshots), key=lambda k: abs(k - at * last))
        print(f"at={at:g} of {last} steps: step {step}")
    if step is not None:
        snapshots = [s for s in snapshots if s["step"] <= step]
    steps = [s["step"] for s in snapshots for _ in s["sigma_rels"]]
    sigmas = [r for s in snapshots for r in s["sigma_rels"]]
    states = [p for s in snapshots for p in s["profiles"]]
    base = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    out = []
    for sigma_rel in sigma_rels:
        state, weights = reconstruct(states, steps, sigmas, sigma_rel, step)
        ckpt = dict(base)
        ckpt["state_dict"] = {**base["state_dict"], **{EMA_PREFIX + k: v for k, v in state.items()}}
        ckpt["phema"] = {
            "sigma_rel": sigma_rel,
            "step": step or max(steps),
            "coefficients": weights.tolist(),
        }
        name = f"phema-{sigma_rel:.3f}" + ("" if step is None else f"-step{step}")
        path = run_dir / "checkpoints" / f"{name}.ckpt"
        save_atomically(ckpt, path)
        out.append(path)
        print(
            f"sigma_rel {sigma_rel:.3f}: {path} (from {len(states)} snapshots up to step {step or max(steps)})"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv) if "=" in a)
    if "run_dir" not in args or "sigma_rel" not in args:
        raise SystemExit(USAGE)
    try:
        sigma_rels = [float(s) for s in args["sigma_rel"].strip("[]").split(",")]
        step = int(args["step"]) if "step" in args else None
        at = float(args["at"]) if "at" in args else None
    except ValueError:
        raise SystemExit(
            "sigma_rel= takes numbers (0.05,0.1), step= a whole number, at= a fraction. " + USAGE
        ) from None
    if step is not None and at is not None:
        raise SystemExit(f"step= and at= both choose the step; give one. {USAGE}")
    if at is not None and not 0 < at <= 1:
        raise SystemExit(f"at={args['at']}: must be a fraction of the run in (0, 1]. {USAGE}")
    try:
        phema(args["run_dir"], sigma_rels, step, at)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"Error: {e}") from None  # a run or value it cannot use: no traceback


if __name__ == "__main__":
    main()
