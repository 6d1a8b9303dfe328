"""`FixedValidation`: val/loss at the same noise levels and noise in every epoch and run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from difftrain.diffusion.loss import x0_error
from difftrain.nets.protocol import Cond
from difftrain.streams import golden_points, seeded_noise
from difftrain.training.health import bucket_names


class FixedValidation(nn.Module):
    """The EDM-weighted x0 error (`diffusion.loss.x0_error`) of the EMA weights (`loss`, logged as
    val/loss) and of the online ones (`loss_online`), at fixed log-uniform noise levels in
    `sigma_range` and fixed noise per example (both from the example's index): comparable across
    epochs, and across runs with other objectives, weightings or schedules. Also per noise-level
    bucket (edges in `sigma_edges`), and the EMA's gain over the online weights.
    """

    def __init__(
        self,
        sigma_range: Sequence[float] = (0.002, 80.0),
        sigma_edges: Sequence[float] = (0.1, 1.0, 10.0),
        seed: int = 0,
    ):
        super().__init__()
        self.sigma_range, self.sigma_edges, self.seed = (
            tuple(sigma_range),
            sorted(sigma_edges),
            seed,
        )
        self.loss, self.loss_online = MeanMetric(), MeanMetric()
        self.names = bucket_names(self.sigma_edges, "val/loss")
        self.buckets = nn.ModuleList(MeanMetric() for _ in self.names)

    def fixed_noise(self, index: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
        """Noise level and noise of validation example i: the same in every epoch and run."""
        u = golden_points(index)  # low-discrepancy levels in [0, 1)
        lo, hi = (math.log(s) for s in self.sigma_range)
        return torch.exp(lo + u * (hi - lo)).float(), seeded_noise(self.seed, index, shape)

    def update(
        self, ema: nn.Module, online: nn.Module, x0: Tensor, cond: Cond, index: Tensor
    ) -> None:
        """Score a batch x0 (B, *shape) of validation examples number `index` (B,)."""
        sigma, noise = self.fixed_noise(index, x0.shape[1:])
        sigma, noise = sigma.to(x0), ema.noise(noise.to(x0))
        losses = x0_error(ema, x0, sigma, noise, cond)
        self.loss.update(losses)
        self.loss_online.update(x0_error(online, x0, sigma, noise, cond))
        bucket = torch.bucketize(sigma, sigma.new_tensor(self.sigma_edges), right=True)
        for b, metric in enumerate(self.buckets):
            metric.update(losses, weight=(bucket == b).float())

    def epoch_end(self) -> dict[str, Tensor]:
        """val/ema_gap (> 0: the EMA weights denoise better) and the buckets' losses (those with
        examples), from metrics every process has synced: the same on each. Resets the buckets."""
        values = {"val/ema_gap": self.loss_online.compute() - self.loss.compute()}
        for name, metric in zip(self.names, self.buckets, strict=True):
            value = metric.compute()
            if not value.isnan():
                values[name] = value
            metric.reset()
        return values
