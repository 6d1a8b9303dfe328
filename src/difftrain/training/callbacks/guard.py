"""`Guard`: survive non-finite steps and loss spikes by rolling back to the last good state."""

from __future__ import annotations

import copy
import logging
from collections import deque
from typing import Any

import lightning as L
import torch

from difftrain.training.health import SpikeDetector
from difftrain.training.report import FollowsRollbacks, StepReport

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Raised after `max_rollbacks` rollbacks: the run cannot be saved by rolling back."""

    run_status = "diverged"  # what summary.json calls a run that ends this way


def _to_cpu(state: object) -> object:
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_to_cpu(v) for v in state)
    return copy.deepcopy(state)


def _followers(trainer: L.Trainer) -> list[FollowsRollbacks]:
    """Callbacks whose state follows the weights back on a rollback (`FollowsRollbacks`)."""
    return [cb for cb in trainer.callbacks if isinstance(cb, FollowsRollbacks)]


class Guard(L.Callback):
    """Rolls back (weights, EMA, optimizer, and callbacks that `FollowsRollbacks`, such as
    `PostHocEMA`) to the last good state and cuts the learning rate.

    The module already skips steps whose loss or gradient is not finite. A rollback follows when
    `max_nonfinite` such steps fall within `window` steps, or when the loss stays a spike (see
    `SpikeDetector`) for `spike_patience` steps in a row. The good state is snapshotted in memory
    every `snapshot_every` healthy steps. The steps are read on the host on logging steps
    (`trainer.log_every_n_steps`), all at once, so that the other steps never wait for the
    device. After `max_rollbacks` rollbacks the run stops with
    `TrainingDiverged`, saying what happened and what to try.
    """

    def __init__(
        self,
        max_nonfinite: int = 3,
        window: int = 100,
        spike_threshold: float = 6.0,
        spike_window: int = 200,
        spike_patience: int = 20,
        snapshot_every: int = 100,
        lr_factor: float = 0.5,
        max_rollbacks: int = 3,
    ):
        if not 0 < lr_factor <= 1:
            raise ValueError(f"guard.lr_factor must be in (0, 1], got {lr_factor}")
        self.max_nonfinite, self.window, self.spike_patience = max_nonfinite, window, spike_patience
        self.snapshot_every, self.lr_factor = snapshot_every, lr_factor
        self.max_rollbacks = max_rollbacks
        self.spikes = SpikeDetector(spike_window, spike_threshold)
        self.nonfinite: deque[int] = deque()
        self.spike_steps = self.spike_run = self.rollbacks = 0
        self.events: list[dict] = []
        self.snapshot: dict | None = None
        self.snapshot_due, self.next_snapshot = True, 0
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor | bool]] = []  # unread steps

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        # Snapshots are taken here, once every hook of the previous step has run: callbacks that
        # follow rollbacks update in their own on_train_batch_end, which may come after ours.
        if self.snapshot_due:
            self._snapshot(trainer, pl_module)
            self.snapshot_due = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        # Each step's loss and skip flag stay on the device until a logging step reads them all at
        # once: a rollback then comes up to log_every_n_steps late, while the module's skip has
        # kept every non-finite update out of the weights meanwhile.
        report: StepReport = outputs["report"]
        self.pending.append((trainer.global_step, report.loss, report.skipped))
        if report.logs:
            self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = [step for step, _, _ in self.pending]
        rows = [
            torch.stack([loss.float(), torch.as_tensor(bad, device=loss.device).float()])
            for _, loss, bad in self.pending
        ]
        read = torch.stack(rows).tolist()  # the one read of the host: [loss, skipped] per step
        self.pending.clear()
        reason = None
        for step, (loss, bad) in zip(steps, read, strict=True):
            if bad:
                self.nonfinite.append(step)
            while self.nonfinite and self.nonfinite[0] <= step - self.window:
                self.nonfinite.popleft()
            spike = not bad and self.spikes(loss)  # every process's mean
            self.spike_steps += spike
            self.spike_run = self.spike_run + 1 if spike else 0
            if len(self.nonfinite) >= self.max_nonfinite:
                reason = f"{len(self.nonfinite)} non-finite steps within {self.window} steps"
            elif self.spike_run >= self.spike_patience:
                reason = f"the loss stayed a spike for {self.spike_run} steps"
            if reason:
                break
        pl_module.log("train/loss_spikes", float(self.spike_steps))
        step = trainer.global_step
        if reason:
            self._rollback(trainer, pl_module, reason)
        elif not self.nonfinite and self.spike_run == 0 and step >= self.next_snapshot:
            self.snapshot_due = True

    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.next_snapshot = trainer.global_step + self.snapshot_every
        self.snapshot = {
            "step": trainer.global_step,
            "module": _to_cpu(pl_module.state_dict()),
            "optimizers": [_to_cpu(opt.state_dict()) for opt in trainer.optimizers],
            "schedulers": [_to_cpu(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
            "callbacks": [_to_cpu(cb.state_dict()) for cb in _followers(trainer)],
        }

    def _rollback(self, trainer: L.Trainer, pl_module: L.LightningModule, reason: str) -> None:
        self.rollbacks += 1
        event = {"step": trainer.global_step, "reason": reason, "to_step": self.snapshot["step"]}
        self.events.append(event)
        if self.rollbacks > self.max_rollbacks:
            raise TrainingDiverged(
                f"training diverged at step {trainer.global_step}: {reason}, after {self.max_rollbacks} "
                f"rollbacks that each cut the learning rate by {self.lr_factor}. Try a lower optimizer.lr, "
                "a longer warm-up, stronger clipping (trainer.gradient_clip_val), fp32 instead of "
                "bf16/fp16 (trainer.precision), or look for bad data"
            )
        log.warning(
            "rolling back from step %d to step %d: %s", event["step"], event["to_step"], reason
        )
        # Everything that steps with the weights goes back with them: the module (weights, EMA,
        # the noise-level sampler's statistics), the optimizers and the LR schedules. Then the
        # learning rate is cut, in the optimizers and in what the schedules scale from.
        pl_module.load_state_dict(self.snapshot["module"])
        for optimizer, state in zip(trainer.optimizers, self.snapshot["optimizers"], strict=True):
            optimizer.load_state_dict(state)
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
        configs = trainer.lr_scheduler_configs
        for config, state in zip(configs, self.snapshot["schedulers"], strict=True):
            scheduler = config.scheduler
            scheduler.load_state_dict(state)
            scheduler.base_lrs = [lr * self.lr_factor for lr in scheduler.base_lrs]
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        for callback, state in zip(_followers(trainer), self.snapshot["callbacks"], strict=True):
            callback.rollback_to(state, self.snapshot["step"])
        self.nonfinite.clear()
        self.pending.clear()
        self.spikes.reset()
        self.spike_run = 0
        pl_module.log("train/rollbacks", float(self.rollbacks))

    def summary(self) -> dict[str, Any]:
        return {
            "health": {
                "loss_spikes": self.spike_steps,
                "rollbacks": self.rollbacks,
                "rollback_events": self.events,
            }
        }
