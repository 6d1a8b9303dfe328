"""Exact resume: stopping and resuming gives the same weights as never stopping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difftrain.cli.train import train

# toy2d epochs of 4 steps, dropout on: batches, noise, noise levels and dropout masks all random.
TOY = [
    "experiment=toy2d", "logger=none", "data.num_train=64", "data.batch_size=16",
    "net.hidden=32", "net.depth=2", "net.dropout=0.1", "trainer.val_check_interval=2",
    "callbacks.evaluate.every_n_validations=100", "callbacks.sample_grid.num_samples=50",
    "sampler.steps=4", "~callbacks.progress_bar",
]  # fmt: skip


def final_state(cfg) -> dict:
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path_factory.mktemp("straight"), *TOY, "trainer.max_steps=10")
    train(cfg)
    return final_state(cfg)


@pytest.mark.parametrize("stop", [4, 6], ids=["at_an_epoch_end", "mid_epoch"])
def test_a_resumed_run_ends_with_the_same_weights(straight, make_cfg, tmp_path, stop):
    first = make_cfg(*TOY, f"trainer.max_steps={stop}")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg(*TOY, "trainer.max_steps=10", f"ckpt_path={ckpt}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    state = final_state(resumed)
    assert state.keys() == straight.keys()
    assert all(torch.equal(state[k], straight[k]) for k in state)
