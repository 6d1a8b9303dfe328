"""Time budgets: with trainer.max_time, the step-based schedules follow the share of time spent.

A fake clock makes each training step take one second, so a 60-second budget is 60 steps
whatever the machine, and a recipe written for 20 steps must be stretched three times.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import timer as timer_module
from torch import nn

from difftrain.cli.train import train
from difftrain.training.budget import go_to_step
from difftrain.training.ema import EMA, WarmupDecay
from difftrain.training.optim import warmup_cosine
from tests.conftest import FAST, compose_cfg


class FakeTime:
    """Stands in for the `time` module of Lightning's Timer: `monotonic()` reads `now`."""

    now = 0.0

    def monotonic(self) -> float:
        return self.now


class OneSecondSteps(L.Callback):
    """Each training step takes one fake second; records what each step trained with."""

    made: list[OneSecondSteps] = []

    def __init__(self, pause_at: int = -1):
        self.pause_at = pause_at  # this step takes 10 more seconds (a validation, say)
        self.lr: list[float] = []
        self.resolution: list[int] = []
        OneSecondSteps.made.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.resolution.append(batch[0].shape[-1])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        FAKE.now += 1.0 + 10.0 * (trainer.global_step - 1 == self.pause_at)


FAKE = FakeTime()


def budget_run(tmp_path, monkeypatch, *overrides):
    FAKE.now = 0.0
    monkeypatch.setattr(timer_module, "time", FAKE)
    cfg = compose_cfg(
        tmp_path, *FAST, "logger=none", "~callbacks.evaluate", "~callbacks.sample_grid",
        "trainer.max_steps=20", "lr_scheduler=warmup_cosine", "lr_scheduler.warmup_steps=5",
        "optimizer.lr=1e-3", "trainer.log_every_n_steps=5", "trainer.limit_train_batches=null",
        "trainer.val_check_interval=1000", "+callbacks.clock._target_=" + __name__ + ".OneSecondSteps",
        *overrides,
    )  # fmt: skip
    OneSecondSteps.made.clear()
    train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    return OneSecondSteps.made[-1], summary


def test_a_time_budget_stretches_the_lr_schedule_to_the_time(tmp_path, monkeypatch):
    steps, summary = budget_run(tmp_path, monkeypatch, "trainer.max_time=00:00:01:00")
    assert summary["status"] == "finished"
    assert len(steps.lr) == 60  # stopped by the minute (60 one-second steps), not at max_steps=20
    schedule = [1e-3 * f for f in _factors(warmup_cosine, warmup_steps=5, total_steps=20)]
    # read every 5 steps: from step 5 on, the schedule is where the clock says (step / 3)
    for step in range(10, 60):
        assert steps.lr[step] == pytest.approx(schedule[min(step // 3, 20)], abs=0.06e-3)
    peak = max(range(60), key=steps.lr.__getitem__)
    assert 12 <= peak <= 18  # warm-up ends at schedule step 5: real step 15
    assert steps.lr[-1] < 0.02e-3  # annealed within the budget


def test_a_pause_moves_the_schedule_on_without_throwing_it(tmp_path, monkeypatch):
    steps, _ = budget_run(tmp_path, monkeypatch, "trainer.max_time=00:00:01:00",
                          "+callbacks.clock.pause_at=22")  # fmt: skip
    assert len(steps.lr) == 50  # 10 of the 60 seconds went to the pause
    decay = steps.lr[20:]  # after the warm-up: the cosine only goes down
    assert all(b <= a + 1e-9 for a, b in zip(decay, decay[1:], strict=False)), " ".join(
        f"{x * 1e4:.2f}" for x in decay
    )
    assert steps.lr[-1] < 0.02e-3


def test_without_a_budget_the_schedules_count_steps(tmp_path, monkeypatch):
    steps, _ = budget_run(tmp_path, monkeypatch)
    schedule = [1e-3 * f for f in _factors(warmup_cosine, warmup_steps=5, total_steps=20)]
    assert steps.lr == pytest.approx(schedule[:20])


def test_a_time_budget_moves_the_resolution_curriculum(tmp_path, monkeypatch):
    steps, _ = budget_run(
        tmp_path, monkeypatch, "trainer.max_time=00:00:01:00", "callbacks=curriculum",
        "callbacks.resolution_curriculum.stages=[[0,0.5],[10,1.0]]",
    )  # fmt: skip
    switch = steps.resolution.index(max(steps.resolution))
    assert min(steps.resolution) * 2 == max(steps.resolution)
    assert 28 <= switch <= 33  # schedule step 10 of 20: half of the minute


def test_bad_budgets_are_refused_before_the_run(make_cfg):
    from difftrain.runs.preflight import check_values

    assert check_values(make_cfg("trainer.max_time=15min")) == [
        "trainer.max_time='15min': must be DD:HH:MM:SS, e.g. 00:00:15:00 for 15 minutes"
    ]
    (problem,) = check_values(make_cfg("trainer.max_time=00:00:15:00", "trainer.max_steps=-1"))
    assert problem.startswith("trainer.max_steps=-1: a time budget")


def test_ema_decay_per_update_spans_the_schedule_steps_it_stands_for():
    net, decay = nn.Linear(1, 1, bias=False), WarmupDecay(0.9)
    ema = EMA(net, decay)
    ema.update(net)  # the first update copies
    before = ema.module.weight.clone()
    net.weight.data += 1.0
    ema.update(net, count=100.0, per_update=3.0)  # one update standing for three at step 100
    expected = before + (1 - 0.9**3) * (net.weight - before)
    torch.testing.assert_close(ema.module.weight, expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: warmup_cosine(opt, warmup_steps=5, total_steps=20),
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=8),
        lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
    ],
)
def test_go_to_step_equals_stepping_there(make):
    stepped = make(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))
    jumped = make(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))
    for step in range(1, 15):
        stepped.optimizer.step()
        stepped.step()
        go_to_step(jumped, step)
        assert jumped.get_last_lr() == pytest.approx(stepped.get_last_lr())
    go_to_step(jumped, 3)  # and back
    assert jumped.optimizer.param_groups[0]["lr"] == pytest.approx(_lr_at(make, 3))


def _lr_at(make, step: int) -> float:
    scheduler = make(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))
    for _ in range(step):
        scheduler.optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()[0]


def _factors(make, **kwargs) -> list[float]:
    scheduler = make(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), **kwargs)
    factors = []
    for _ in range(21):
        factors.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return factors


def test_every_process_follows_rank_zeros_clock(monkeypatch):
    """Under DDP each process reads its own clock, but the schedule step is rank 0's, broadcast:
    here rank 0 is further (60 of 100 schedule steps) than this process (30)."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer
    from lightning.pytorch.trainer.states import RunningStage

    from difftrain.training.budget import ScheduleClock

    monkeypatch.setattr(timer_module, "time", FAKE)
    timer = Timer(duration="00:00:01:40")  # 100 s
    timer._start_time[RunningStage.TRAINING] = FAKE.now = 0.0
    sent = []
    strategy = SimpleNamespace(broadcast=lambda value: sent.append(value) or 60.0 + len(sent) - 1)
    trainer = SimpleNamespace(callbacks=[timer], global_step=0, strategy=strategy)
    clock = ScheduleClock(horizon=100, every=10)
    FAKE.now = 30.0
    clock.read(trainer)
    assert sent == [pytest.approx(30.0)] and clock.at(trainer) == (60.0, 0.0)
    trainer.global_step, FAKE.now = 5, 35.0
    clock.read(trainer)  # not due: no collective, extrapolated
    assert len(sent) == 1 and clock.at(trainer)[0] == 60.0
    trainer.global_step, FAKE.now = 10, 40.0
    clock.read(trainer)
    assert clock.at(trainer) == (61.0, pytest.approx(0.1))  # rank 0's pace: 1 per 10 steps
    assert clock.step_at(trainer, 20) == 62
