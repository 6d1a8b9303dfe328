"""Preemption: a real training process told to stop saves its exact state, says so, exits 143,
and resumed it ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import CACHE, FAST, run_module

RUN = [
    *FAST, "debug=[fast,faults]", "trainer.max_steps=12", "trainer.limit_train_batches=null",
    "trainer.val_check_interval=6", "logger=none", f"paths.cache_dir={CACHE}",
]  # fmt: skip


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 12
    return ckpt["state_dict"]


def stop_at_step_4(run_dir: Path, signal_name: str) -> None:
    """A run told to stop at step 4 saves step 5 (the step under way), says why, and exits 143
    (130 for Ctrl-C, which no scheduler should requeue)."""
    stopped = run_module(
        "difftrain.cli.train", *RUN, f"hydra.run.dir={run_dir}", "callbacks.fault_injection.signal_step=4",
        f"callbacks.fault_injection.signal_name={signal_name}", cwd=run_dir.parent, check=False,
    )  # fmt: skip
    assert stopped.returncode == (130 if signal_name == "SIGINT" else 143), stopped.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["steps"] == 5  # step 4 finished
    how = "stopped by Ctrl-C (SIGINT)" if signal_name == "SIGINT" else f"preempted by {signal_name}"
    assert f"{how} at step 5" in summary["error"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5


@pytest.mark.parametrize(  # every cluster's (2 processes stop on it in test_distributed), Ctrl-C
    "signal_name", [pytest.param("SIGTERM", marks=pytest.mark.slow), "SIGINT"]
)
def test_a_signal_saves_the_step_and_exits(tmp_path, signal_name):
    stop_at_step_4(tmp_path / "cut", signal_name)


@pytest.mark.slow  # the default suite keeps a faster test of the same path
def test_a_run_stopped_by_sigusr1_resumes_exactly(tmp_path):
    """SLURM's --signal=USR1 stops the run like SIGTERM; resumed (whatever stopped it), it ends
    bit for bit where an uninterrupted run ends."""
    run_module("difftrain.cli.train", *RUN, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    cut = tmp_path / "cut"
    stop_at_step_4(cut, "SIGUSR1")
    resumed = run_module(
        "difftrain.cli.train", *RUN, f"hydra.run.dir={cut}", "ckpt_path=last", cwd=tmp_path
    )
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert "trained 7 steps" in resumed.stdout + resumed.stderr  # this run's, not the total
    assert "not resumable" not in resumed.stderr  # Lightning knows the device batches resume
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    whole, again = weights(tmp_path / "whole"), weights(cut)
    assert all(torch.equal(whole[k], again[k]) for k in whole), "the resumed run differs"


def test_ckpt_path_last_without_a_checkpoint_says_so_and_starts(tmp_path):
    result = run_module(
        "difftrain.cli.train", *RUN, "trainer.max_steps=2", "ckpt_path=last",
        f"hydra.run.dir={tmp_path / 'fresh'}", cwd=tmp_path,
    )  # fmt: skip
    assert "no checkpoint in" in result.stdout + result.stderr
    assert "starts from scratch" in result.stdout + result.stderr


def test_the_handlers_are_restored_after_fitting(make_cfg):
    from difftrain.cli.train import train

    before = signal.getsignal(signal.SIGTERM)
    train(make_cfg(*FAST, "logger=none"))
    assert signal.getsignal(signal.SIGTERM) == before
