"""EMA of the network weights: decay schedules and an average that never waits for the host."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Count = int | Tensor  # a number of updates, on the host or on the device


@dataclass(frozen=True)
class WarmupDecay:
    """Decay min(decay, (1 + n) / (10 + n)) after n updates: a short average early, `decay` later."""

    decay: float = 0.999

    def __post_init__(self) -> None:
        if not 0 <= self.decay < 1:
            raise ValueError(f"ema decay must be in [0, 1), got {self.decay}")

    def __call__(self, n: Count) -> float | Tensor:
        ramp = (1 + n) / (10 + n)
        return ramp.clamp(max=self.decay) if isinstance(ramp, Tensor) else min(self.decay, ramp)


@dataclass(frozen=True)
class PowerDecay:
    """The power-function EMA of Karras et al. 2024 (EDM2, Eq. 1): decay (1 - 1/n)^(gamma + 1).

    Its length relative to training time is fixed; `gamma` = 6.94 gives sigma_rel ~ 0.1.
    """

    gamma: float = 6.94

    def __call__(self, n: Count) -> float | Tensor:
        if isinstance(n, Tensor):
            return torch.where(n > 0, (1 - 1 / n.clamp(min=1)) ** (self.gamma + 1), 0.0)
        return (1 - 1 / n) ** (self.gamma + 1) if n > 0 else 0.0


class EMA(nn.Module):
    """A frozen copy of `model` (`self.module`) averaging its weights with decay(n) after n updates.

    Like torch's AveragedModel with a multi_avg_fn (the first update copies), but the update runs
    on the device end to end: `skip`, a device tensor, leaves the average and the count unchanged
    without asking the host (AveragedModel compares its count on the host twice per update).
    """

    def __init__(self, model: nn.Module, decay: Callable[[Count], float | Tensor]):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update(
        self,
        model: nn.Module,
        skip: Tensor | None = None,
        count: float | None = None,
        per_update: float = 1.0,
    ) -> None:
        """Average in `model`'s weights with decay(count) ** per_update; `count` defaults to
        the updates so far. A time-budgeted run passes its schedule step and the schedule steps
        per update, so the average spans the same share of training on any machine."""
        n = self.n_averaged
        decay = self.decay(n.float() if count is None else count)
        if per_update != 1.0:
            decay = decay**per_update
        weight = torch.where(n == 0, 1.0, 1 - decay)  # first update: a copy
        if skip is not None:
            weight = weight * (~skip)
        # Frozen parts (a CLIP text encoder) are the same in both: not averaged.
        pairs = [
            (o, t)
            for o, t in zip(self.module.parameters(), model.parameters(), strict=True)
            if t.requires_grad
        ] + [
            (o, t)
            for o, t in zip(self.module.buffers(), model.buffers(), strict=True)
            if t.is_floating_point()
        ]
        ours, theirs = [o for o, _ in pairs], [t for _, t in pairs]
        torch._foreach_lerp_(ours, [t.detach() for t in theirs], weight.to(ours[0].dtype))
        self.n_averaged += 1 if skip is None else (~skip).long()

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
