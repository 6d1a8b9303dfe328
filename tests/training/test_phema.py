"""Post-hoc EMA: the profile math, a reconstruction against a directly tracked EMA, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difftrain.cli.phema import main as phema_main
from difftrain.cli.phema import phema
from difftrain.cli.train import train
from difftrain.runs.pretrained import load_trained
from difftrain.training.ema import PowerDecay
from difftrain.training.posthoc_ema import (
    gamma_to_sigma_rel,
    posthoc_coefficients,
    profile_inner_product,
    reconstruct,
    sigma_rel_to_gamma,
)
from tests.conftest import FAST


def test_sigma_rel_and_gamma_invert_each_other():
    for sigma_rel in (0.03, 0.05, 0.1, 0.2):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel)
    assert gamma_to_sigma_rel(6.94) == pytest.approx(0.1, abs=1e-3)  # PowerDecay's default


def test_inner_product_matches_numerical_integration():
    tau = np.linspace(0, 1000, 2_000_001)

    def profile(t, g):
        return np.where(tau <= t, (g + 1) * tau**g / t ** (g + 1), 0.0)

    for (ta, ga), (tb, gb) in [
        ((600, 5.0), (1000, 12.0)),
        ((1000, 3.0), (400, 8.0)),
        ((700, 6.0), (700, 6.0)),
    ]:
        numeric = np.trapezoid(profile(ta, ga) * profile(tb, gb), tau)
        assert profile_inner_product(ta, ga, tb, gb) == pytest.approx(numeric, rel=1e-3)


def test_reconstruction_matches_a_directly_tracked_ema():
    """Weights follow a noisy drift; an EMA of sigma_rel 0.075 built from 0.05/0.10 snapshots."""
    rng = np.random.default_rng(0)
    steps = 4000
    trajectory = np.cumsum(rng.normal(0.01, 0.1, (steps, 8)), axis=0)
    tracked = {s: np.zeros(8) for s in (0.05, 0.075, 0.10)}
    snapshots, snap_steps, snap_sigmas = [], [], []
    for t in range(1, steps + 1):
        for s, ema in tracked.items():
            beta = PowerDecay(sigma_rel_to_gamma(s))(t)
            tracked[s] = beta * ema + (1 - beta) * trajectory[t - 1]
        if t % 250 == 0:
            for s in (0.05, 0.10):
                snapshots.append({"w": torch.tensor(tracked[s])})
                snap_steps.append(t)
                snap_sigmas.append(s)
    state, weights = reconstruct(snapshots, snap_steps, snap_sigmas, 0.075)
    assert weights.sum() == pytest.approx(1.0)
    target, long_ema = tracked[0.075], tracked[0.10]
    error = np.abs(state["w"].numpy() - target).max()
    assert error < 0.05 * np.abs(long_ema - target).max()  # far closer than the nearest snapshot
    x = posthoc_coefficients(
        snap_steps, [sigma_rel_to_gamma(s) for s in snap_sigmas], steps, sigma_rel_to_gamma(0.10)
    )
    assert x[-1] == pytest.approx(1.0, abs=1e-6)  # a stored profile is reconstructed by itself


def test_cli_writes_checkpoints_that_sample(make_cfg):
    cfg = make_cfg(*FAST, "callbacks=phema", "callbacks.posthoc_ema.snapshot_every=1", "logger=none",
                   "callbacks.evaluate.num_samples=40")  # fmt: skip
    train(cfg)
    paths = phema(cfg.paths.output_dir, [0.05, 0.08])
    assert [p.name for p in paths] == ["phema-0.050.ckpt", "phema-0.080.ckpt"]
    model = load_trained(paths[1])
    images, nfe = model.sample(4, seed=0)
    assert images.shape == (4, 16, 16, 1) and nfe == model.diffusion.sampler.steps
    ckpt = torch.load(paths[1], weights_only=False)
    assert ckpt["phema"]["sigma_rel"] == 0.08 and len(ckpt["phema"]["coefficients"]) == 8


def test_the_last_step_is_snapshotted_and_earlier_steps_reconstruct(make_cfg):
    """A run that stops between snapshots (a time budget) still snapshots its last step; step=N
    writes the average as it was at step N, under its own name."""
    cfg = make_cfg(*FAST, "callbacks=phema", "callbacks.posthoc_ema.snapshot_every=3", "logger=none",
                   "~callbacks.evaluate")  # fmt: skip
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert sorted(p.name for p in (run / "phema").iterdir()) == [
        "phema-0000003.pt", "phema-0000004.pt",
    ]  # fmt: skip
    (last,) = phema(run, [0.05])
    (early,) = phema(run, [0.05], step=3)
    assert early.name == "phema-0.050-step3.ckpt" and last.name == "phema-0.050.ckpt"
    a, b = (torch.load(p, weights_only=False) for p in (last, early))
    assert (a["phema"]["step"], b["phema"]["step"]) == (4, 3)
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    (near,) = phema(run, [0.05], at=0.7)  # 0.7 x 4 = 2.8: the snapshot nearest is step 3
    assert near.name == "phema-0.050-step3.ckpt"
    with pytest.raises(SystemExit, match="at=1.5: must be a fraction"):
        phema_main([f"run_dir={run}", "sigma_rel=0.05", "at=1.5"])


def test_cli_without_snapshots_says_how_to_record_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="callbacks=phema"):
        phema(tmp_path, [0.1])
    # from the command line: the message alone, no traceback; values that are not numbers too
    with pytest.raises(SystemExit, match="Error: no post-hoc EMA snapshots .* callbacks=phema"):
        phema_main([f"run_dir={tmp_path}", "sigma_rel=0.1"])
    with pytest.raises(SystemExit, match="sigma_rel= takes numbers"):
        phema_main([f"run_dir={tmp_path}", "sigma_rel=abc"])
