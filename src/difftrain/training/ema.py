"""EMA of the network weights: decay schedules for `torch.optim.swa_utils.AveragedModel`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


@dataclass(frozen=True)
class WarmupDecay:
    """Decay min(decay, (1 + n) / (10 + n)) after n updates: a short average early, `decay` later."""

    decay: float = 0.999

    def __post_init__(self) -> None:
        if not 0 <= self.decay < 1:
            raise ValueError(f"ema decay must be in [0, 1), got {self.decay}")

    def __call__(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n))


@dataclass(frozen=True)
class PowerDecay:
    """The power-function EMA of Karras et al. 2024 (EDM2, Eq. 1): decay (1 - 1/n)^(gamma + 1).

    Its length relative to training time is fixed; `gamma` = 6.94 gives sigma_rel ~ 0.1.
    """

    gamma: float = 6.94

    def __call__(self, n: int) -> float:
        return (1 - 1 / n) ** (self.gamma + 1) if n > 0 else 0.0


def ema_model(model: nn.Module, decay: Callable[[int], float]) -> AveragedModel:
    """A frozen copy of `model` whose `update_parameters(model)` applies the decay schedule."""

    def update(ema: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        torch._foreach_lerp_(ema, current, 1 - decay(int(num_averaged)))

    averaged = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    return averaged.requires_grad_(False)
