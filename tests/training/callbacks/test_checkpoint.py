"""Checkpoints: the final step is validated and saved; last.ckpt is rewritten on a timer too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difftrain.cli.train import train
from tests.conftest import CACHE, FAST, run_module
from tests.training.callbacks.test_resume import TOY


def test_the_last_steps_are_validated_when_max_steps_is_no_multiple(make_cfg):
    """max_steps 5, validation every 2: the final step 5 gets its validation, grid and
    evaluation, and the run's final metrics are its final weights'."""
    cfg = make_cfg(*TOY, "trainer.max_steps=5", "callbacks.evaluate.every_n_validations=2",
                   "callbacks.evaluate.num_samples=100", "callbacks.evaluate.sampler.steps=4")  # fmt: skip
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    grids = sorted(p.name for p in (run / "samples").glob("step_*.png"))
    assert grids == ["step_0000002.png", "step_0000004.png", "step_0000005.png"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluation"]["step"] == 5  # evaluated at the end, not at step 4
    assert "val/loss" in metrics and "eval/modes_captured" in metrics


def test_a_kill_before_the_first_validation_keeps_the_timed_last_checkpoint(tmp_path):
    """SIGKILL (as out of memory kills) at step 6, with validation only at step 100: the timed
    checkpoint holds a step before it, which ckpt_path=last resumes."""
    run = tmp_path / "run"
    common = [*FAST, "debug=[fast,faults]", "trainer.max_steps=100", "trainer.limit_train_batches=null",
              "trainer.val_check_interval=100", "logger=none", f"paths.cache_dir={CACHE}",
              f"hydra.run.dir={run}"]  # fmt: skip
    killed = run_module(
        "difftrain.cli.train", *common, "callbacks.model_checkpoint.last_every_minutes=1e-6",
        "callbacks.fault_injection.signal_step=6", "callbacks.fault_injection.signal_name=SIGKILL",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert killed.returncode == -9
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6  # every step was saved: the last one before the kill
    assert not (run / "checkpoints" / "best.ckpt").exists()  # best.ckpt is for validated weights


@pytest.mark.parametrize("minutes", [0, -1])
def test_timed_checkpoints_refuse_a_period_that_is_not_positive(make_cfg, minutes):
    from difftrain.errors import ConfigError

    cfg = make_cfg(*FAST, f"callbacks.model_checkpoint.last_every_minutes={minutes}")
    with pytest.raises(ConfigError, match="last_every_minutes"):
        train(cfg)
