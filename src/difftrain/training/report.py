"""The interfaces between the training module and its callbacks.

Values are device tensors: a callback that needs one on the host (`.item()`, `bool(t)`, or
`self.log` of a number, which copies it to the device) makes the host wait for the device, so the
default callbacks do that only on logging steps (`StepReport.logs`, every
`trainer.log_every_n_steps`).

Each training step, `DiffusionModule` returns a `StepReport` (as `outputs["report"]` of
`on_train_batch_end`): callbacks read what happened from it and never from module attributes.
At the end of a run, each callback that `runs.summary.Summarizes` contributes to the run's
`summary.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import lightning as L
from torch import Tensor


@dataclass
class StepReport:
    """What one training step did, filled in as the step runs; tensors stay on the device."""

    losses: Tensor  # (B,) this process's per-example weighted losses, detached
    sigma: Tensor  # (B,) the noise levels they were drawn at
    images: int  # examples in the step, over all processes
    loss: Tensor  # () the step's mean loss over all processes: decisions use this one
    parameters: dict[str, Tensor] = field(default_factory=dict)  # online weights after the update
    grad_norm: Tensor | None = None  # () the gradient's norm before clipping (all processes')
    skipped: Tensor | bool = False  # () loss or gradient not finite on some process: no update
    logs: bool = True  # the loggers write this step: the time to read values on the host


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether the loggers write the current training step: Lightning's own rule (every
    `log_every_n_steps`, and the last step), the same from the step's start to its end."""
    return trainer._logger_connector.should_update_logs


@runtime_checkable
class FollowsRollbacks(Protocol):
    """A callback whose state goes back with the weights when the guard rolls back to `step`."""

    def state_dict(self) -> dict[str, Any]: ...

    def rollback_to(self, state: dict[str, Any], step: int) -> None: ...
