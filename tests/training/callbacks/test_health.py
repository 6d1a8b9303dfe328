"""Health metrics while training, and the end-of-run summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

from difftrain.cli.train import train
from difftrain.training.health import log_slope
from tests.conftest import FAST


def test_health_metrics_and_summary(make_cfg):
    cfg = make_cfg(*FAST, "trainer.log_every_n_steps=2", "data.val_batch_size=64")
    metrics = train(cfg)
    assert {"health/grad_norm", "health/param_norm", "health/update_ratio"} <= set(metrics)
    assert any(k.startswith("health/train_loss_sigma_") for k in metrics)
    assert {"val/loss_online", "val/ema_gap"} <= set(metrics)
    assert metrics["health/update_ratio"] > 0 and metrics["health/grad_norm"] > 0
    summary = json.loads((Path(cfg.paths.output_dir) / "health.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert {
        "loss_trend_per_1k_steps",
        "loss_spikes",
        "nonfinite_steps",
        "rollbacks",
        "final_grad_norm",
    } <= set(summary)
    assert isinstance(summary["val_loss_improving"], bool)
    assert "fid" in summary["latest_evaluation"]


def test_log_slope():
    steps = list(range(0, 1000, 10))
    losses = [math.exp(-0.002 * s) for s in steps]
    assert log_slope(steps, losses) == pytest_approx(-2.0)


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-6)
