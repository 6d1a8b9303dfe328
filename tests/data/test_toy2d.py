"""toy2d: data, the MLP, the mode evaluator, and a run that trains quickly and captures the modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difftrain.cli.train import train
from difftrain.data.toy2d import Toy2DDataModule, toy_points
from difftrain.evaluation.toy import ToyEvaluator
from difftrain.nets.mlp import MLP


@pytest.mark.parametrize("kind, modes", [("ring", 8), ("grid", 25), ("swiss_roll", 10)])
def test_real_data_scores_perfectly(kind, modes):
    points, labels = toy_points(kind, 4000, modes, 2.0, 0.05, seed=0)
    assert points.shape == (4000, 2) and labels.max() < modes
    scores = ToyEvaluator(kind, modes, 2.0, 0.05)(points)
    assert scores["modes_captured"] == modes and scores["hq_share"] > 0.98
    assert scores["swd"] < 0.06  # fresh data against the evaluator's own reference draw


def test_collapsed_samples_are_caught():
    points, labels = toy_points("ring", 4000, 8, 2.0, 0.05, seed=0)
    collapsed = ToyEvaluator("ring", 8, 2.0, 0.05)(points[labels < 3])
    assert collapsed["modes_captured"] == 3
    blurry = ToyEvaluator("ring", 8, 2.0, 0.05)(points + 0.5 * torch.randn_like(points))
    assert blurry["hq_share"] < 0.3
    real = ToyEvaluator("ring", 8, 2.0, 0.05)(points)["swd"]
    assert collapsed["swd"] > 4 * real and blurry["swd"] > 4 * real  # both far from the data


def test_mlp_shapes_and_scatter_plot(tmp_path):
    net = MLP(dim=2, hidden=32, depth=2, num_classes=8)
    x = torch.randn(5, 2)
    assert net(x, torch.zeros(5), class_labels=torch.arange(5)).shape == (
        5,
        2,
    ) and net.sample_shape == (2,)
    dm = Toy2DDataModule(num_train=500, num_val=100)
    dm.setup()
    path = dm.save_samples(torch.randn(100, 2), tmp_path / "scatter.png")
    assert path.is_file() and path.stat().st_size > 1000


def test_toy2d_experiment_captures_the_modes(make_cfg):
    cfg = make_cfg("experiment=toy2d", "trainer.accelerator=cpu", "~callbacks.progress_bar", "logger=none",
                   "trainer.max_steps=900", "trainer.val_check_interval=450", "net.hidden=128",
                   "callbacks.evaluate.num_samples=1000", "callbacks.sample_grid.num_samples=1000")  # fmt: skip
    metrics = train(cfg)
    assert (
        metrics["eval/modes_captured"] == 8 and metrics["eval/hq_share"] > 0.5
    )  # seeds 0-2: 0.70 +- 0.01
    run = Path(cfg.paths.output_dir)
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "step_0000450.png",
        "step_0000900.png",
    ]
    assert json.loads((run / "health.json").read_text())["latest_evaluation"]["modes_captured"] == 8
