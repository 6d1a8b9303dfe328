"""Exact resume: stopping and resuming gives the same weights as never stopping."""

from __future__ import annotations

import json
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


def lr_used(cfg) -> list[float]:
    """The learning rate of every logged step (train/lr: what the optimizer stepped with)."""
    import csv

    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        return [float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")]


LOGGED = ["logger=csv", "trainer.log_every_n_steps=1"]


def test_resuming_with_another_lr_trains_at_it_and_says_so(make_cfg, tmp_path, caplog):
    first = make_cfg(*TOY, *LOGGED, "lr_scheduler=constant", "trainer.max_steps=4")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg(*TOY, *LOGGED, "lr_scheduler=constant", "trainer.max_steps=8",
                       f"ckpt_path={ckpt}", "optimizer.lr=1e-2", "data.kind=swiss_roll")  # fmt: skip
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    assert lr_used(first) == pytest.approx([1e-3] * 4)
    assert lr_used(resumed) == pytest.approx([resumed.optimizer.lr] * 4)  # not the checkpoint's
    state = torch.load(
        Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False
    )
    assert all(g["lr"] == pytest.approx(1e-2) for g in state["optimizer_states"][0]["param_groups"])
    assert state["optimizer_states"][0]["state"]  # Adam's moments carried on
    # One warning names every changed setting (once, where it is set); summary.json records them.
    (note,) = [r.message for r in caplog.records if "other than it was trained with" in r.message]
    assert "optimizer.lr: 0.001 -> 0.01" in note and "data.kind: ring -> swiss_roll" in note
    assert "model.optimizer" not in note and "paths." not in note
    summary = json.loads((Path(resumed.paths.output_dir) / "summary.json").read_text())
    assert summary["resumed"]["changed"]["optimizer.lr"] == [0.001, 0.01]
    assert summary["resumed"]["step"] == 4


def test_resuming_with_another_lr_schedule_follows_it_from_the_resumed_step(make_cfg, tmp_path):
    warmup = ["lr_scheduler=warmup", "lr_scheduler.total_iters=8"]
    first = make_cfg(*TOY, *LOGGED, *warmup, "trainer.max_steps=4")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    # A warm-up twice as long, and AdamW: its weight decay applies, Adam's moments are kept.
    resumed = make_cfg(*TOY, *LOGGED, "lr_scheduler=warmup", "lr_scheduler.total_iters=16",
                       "optimizer=adamw", "trainer.max_steps=6", f"ckpt_path={ckpt}")  # fmt: skip
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    start = resumed.lr_scheduler.start_factor
    expected = [1e-3 * (start + (1 - start) * s / 16) for s in (4, 5)]  # LinearLR at steps 4, 5
    assert lr_used(resumed) == pytest.approx(expected)
    state = torch.load(
        Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False
    )
    decay, no_decay = state["optimizer_states"][0]["param_groups"]
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


def test_resuming_with_another_kind_of_optimizer_starts_its_state_afresh(make_cfg, tmp_path):
    first = make_cfg(*TOY, "trainer.max_steps=4")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg(*TOY, "optimizer=sgd", "trainer.max_steps=6", f"ckpt_path={ckpt}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    state = torch.load(
        Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False
    )
    moments = state["optimizer_states"][0]["state"]
    assert moments and all("exp_avg" not in m and "momentum_buffer" in m for m in moments.values())
