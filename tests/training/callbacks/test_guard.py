"""Guards: NaN steps are skipped, repeated ones roll back, and too many stop the run clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difftrain.cli.train import train
from difftrain.training.callbacks.guard import TrainingDiverged
from difftrain.training.health import SpikeDetector
from tests.conftest import FAST, FAULTS

GUARD = [
    "trainer.max_steps=16",
    "trainer.limit_train_batches=8",
    "trainer.val_check_interval=8",
    "callbacks.guard.window=10",
    "callbacks.guard.snapshot_every=2",
    "logger=none",
]


def health(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "health.json").read_text())


def final_weights(cfg) -> dict:
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, weights_only=False)["state_dict"]


def test_a_nan_step_is_skipped_and_counted(make_cfg):
    cfg = make_cfg(*FAST, *GUARD, FAULTS, "callbacks.fault_injection.nan_steps=[5]")
    train(cfg)
    summary = health(cfg)
    assert (
        summary["nonfinite_steps"] == 1
        and summary["rollbacks"] == 0
        and summary["status"] == "finished"
    )
    state = final_weights(cfg)
    assert int(state["ema.n_averaged"]) == 15  # the EMA skipped the NaN step too
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_repeated_nan_steps_roll_back_and_the_run_recovers(make_cfg):
    cfg = make_cfg(
        *FAST,
        *GUARD,
        FAULTS,
        "callbacks.fault_injection.nan_steps=[6,7,8]",
        "callbacks.guard.max_nonfinite=3",
    )
    train(cfg)
    summary = health(cfg)
    assert summary["nonfinite_steps"] == 3 and summary["rollbacks"] == 1
    (event,) = summary["rollback_events"]
    assert event["step"] == 9 and event["to_step"] == 6 and "3 non-finite steps" in event["reason"]
    assert summary["steps"] == 16 and summary["status"] == "finished"
    assert all(
        torch.isfinite(v).all() for v in final_weights(cfg).values() if v.is_floating_point()
    )


def test_too_many_rollbacks_stop_with_advice_and_keep_what_was_written(make_cfg):
    nan_steps = "[" + ",".join(str(s) for s in range(9, 16)) + "]"
    cfg = make_cfg(*FAST, *GUARD, FAULTS, f"callbacks.fault_injection.nan_steps={nan_steps}", "callbacks.guard.max_nonfinite=2",
                   "callbacks.guard.max_rollbacks=1")  # fmt: skip
    with pytest.raises(
        TrainingDiverged, match=r"training diverged at step .* Try a lower optimizer.lr"
    ):
        train(cfg)
    assert health(cfg)["status"] == "diverged" and health(cfg)["rollbacks"] == 2
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["error"].startswith("TrainingDiverged")
    assert (
        Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ).is_file()  # from the step-8 validation


def test_spike_detector_uses_median_and_mad():
    detector = SpikeDetector(window=100, threshold=6.0, warmup=10)
    for i in range(50):
        assert not detector(1.0 + 0.01 * (i % 5))
    assert not detector(1.1)
    assert detector(5.0)
    assert not detector(float("nan")) or True  # non-finite losses are never added to the history
    assert all(v < 2 for v in detector.history)


def test_post_hoc_ema_profiles_roll_back_with_the_weights(make_cfg):
    # Steps 5, 7 and 9 are NaN: the rollback after step 9 returns to the state after 4 updates, so
    # the healthy updates of steps 4, 6 and 8 leave the profiles too, and their snapshots go.
    cfg = make_cfg(*FAST, *GUARD, "callbacks=phema",
                   "callbacks.posthoc_ema.snapshot_every=1", FAULTS, "callbacks.fault_injection.nan_steps=[5,7,9]",
                   "callbacks.guard.max_nonfinite=3")  # fmt: skip
    train(cfg)
    (event,) = health(cfg)["rollback_events"]
    assert (event["step"], event["to_step"]) == (10, 4)
    phema = Path(cfg.paths.output_dir) / "phema"
    steps = sorted(int(p.stem.split("-")[1]) for p in phema.glob("phema-*.pt"))
    assert not [s for s in steps if 4 < s <= 10] and steps[-1] == 16
    last = torch.load(phema / f"phema-{steps[-1]:07d}.pt", weights_only=False)
    assert last["step"] == 16 - 3 - 3  # 16 steps, less 3 skipped, less the 3 rolled back


def test_a_rollback_restores_the_lr_schedule_then_cuts_the_rate(make_cfg):
    """Faults during the warm-up roll back to step 0: the warm-up starts over from there, and
    the learning rate it reaches is the configured one times lr_factor (not a fraction of it)."""
    cfg = make_cfg(
        *FAST, FAULTS, "callbacks.fault_injection.nan_steps=[20,21,22]", "trainer.max_steps=80",
        "trainer.val_check_interval=40", "lr_scheduler.total_iters=40", "optimizer.lr=1e-3",
        "callbacks.guard.snapshot_every=1000", "callbacks.guard.max_nonfinite=3", "logger=none",
    )  # fmt: skip
    metrics = train(cfg)
    (event,) = health(cfg)["rollback_events"]
    assert (event["step"], event["to_step"]) == (23, 0)
    assert metrics["train/lr"] == pytest.approx(1e-3 * 0.5)
