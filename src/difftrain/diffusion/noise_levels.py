"""Where training puts its noise levels: samplers of sigma for a batch, with importance weights.

Each is called as `noise_levels(n, schedule, device, generator)` and returns (sigma (n,),
weight (n,)); the weight is 1 except for importance sampling, where it keeps the loss estimate
unbiased. Every draw comes from `generator` (the training step's, see `DenoisingLoss`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from difftrain.diffusion.schedules import NoiseSchedule

Generator = torch.Generator | None


class NoiseLevels(nn.Module):
    """Base class. Stateful samplers keep their state in buffers, so checkpoints carry it."""

    step: int = 0

    def set_step(self, step: int) -> None:
        """Told the training step before each draw (a curriculum depends on it)."""
        self.step = step

    def forward(
        self, n: int, schedule: NoiseSchedule, device: torch.device, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def update(self, losses: Tensor) -> None:
        """Learn from the per-example losses of the levels drawn last (only importance sampling
        does); under DDP `losses` are the whole global batch's, gathered in rank order."""


class UniformT(NoiseLevels):
    """t ~ U(0, 1), sigma = schedule.sigma(t) (Ho et al. 2020)."""

    def forward(
        self, n: int, schedule: NoiseSchedule, device: torch.device, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        t = torch.rand(n, device=device, generator=generator)
        return schedule.sigma(t), torch.ones(n, device=device)


class LogNormal(NoiseLevels):
    """ln(sigma) ~ N(p_mean, p_std^2), whatever the schedule (Karras et al. 2022, Sec. 5)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        super().__init__()
        self.p_mean, self.p_std = p_mean, p_std

    def forward(
        self, n: int, schedule: NoiseSchedule, device: torch.device, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        z = torch.randn(n, device=device, generator=generator)
        return torch.exp(self.p_mean + self.p_std * z), torch.ones(n, device=device)


class LogitNormal(NoiseLevels):
    """logit(t) ~ N(mean, std^2), sigma = schedule.sigma(t) (Esser et al. 2024, Sec. 3.1)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(
        self, n: int, schedule: NoiseSchedule, device: torch.device, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        z = torch.randn(n, device=device, generator=generator)
        return schedule.sigma(torch.sigmoid(self.mean + self.std * z)), torch.ones(n, device=device)


class LossSecondMoment(NoiseLevels):
    """Importance sampling of t by sqrt(E[loss^2]) per bin (Nichol & Dhariwal 2021, Sec. 3.3).

    t is drawn uniformly until every one of `num_bins` bins holds `history` losses; then bin b is
    drawn with p_b proportional to sqrt(mean of its squared losses), mixed with `uniform_prob` of
    the uniform distribution, and its losses are weighted by 1 / (num_bins p_b). The statistics
    stay on the device and are updated without a host round trip.
    """

    def __init__(self, num_bins: int = 100, history: int = 10, uniform_prob: float = 0.001):
        super().__init__()
        self.num_bins, self.uniform_prob = num_bins, uniform_prob
        self.register_buffer("losses", torch.zeros(num_bins, history))
        self.register_buffer("counts", torch.zeros(num_bins, dtype=torch.long))
        self._last_bins: Tensor | None = None

    def probabilities(self) -> Tensor:
        """p_b, shape (num_bins,): uniform until every bin is full."""
        full = (self.counts >= self.losses.shape[1]).all()
        p = self.losses.square().mean(1).sqrt()
        p = p / p.sum().clamp(min=1e-30)
        p = p * (1 - self.uniform_prob) + self.uniform_prob / self.num_bins
        return torch.where(full, p, torch.full_like(p, 1 / self.num_bins))

    def forward(
        self, n: int, schedule: NoiseSchedule, device: torch.device, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        p = self.probabilities().to(device)
        bins = torch.multinomial(p, n, replacement=True, generator=generator)
        t = (bins + torch.rand(n, device=device, generator=generator)) / self.num_bins
        self._last_bins = bins
        return schedule.sigma(t), 1 / (self.num_bins * p[bins])

    @torch.no_grad()
    def update(self, losses: Tensor) -> None:
        """Append each loss to its bin's ring of the last `history` losses, in batch order."""
        if self._last_bins is None:
            return
        bins, losses = self._last_bins.to(self.counts.device), losses.detach().float()
        history = self.losses.shape[1]
        order = torch.argsort(bins, stable=True)  # each bin's losses together, in batch order
        bins, losses = bins[order], losses.to(self.losses.device)[order]
        first = torch.searchsorted(bins, bins)  # where each bin's run starts
        occurrence = torch.arange(len(bins), device=bins.device) - first
        slot = (self.counts[bins] + occurrence) % history
        self.losses.index_put_((bins, slot), losses)  # a bin drawn > history times: last wins
        self.counts.index_add_(0, bins, torch.ones_like(bins))
        self._last_bins = None


class Curriculum(NoiseLevels):
    """A noise-level curriculum: `base`'s levels, restricted to a range that widens with training.

    At step 0 only sigma in [start_min, start_max] is drawn; the range's ends move log-linearly to
    the schedule's full range [sigma(0), sigma(1)] over `steps` steps, after which `base` is used
    as is. Levels outside the current range are redrawn (rejection sampling).
    """

    def __init__(self, base: NoiseLevels, start_min: float, start_max: float, steps: int):
        super().__init__()
        if not 0 < start_min < start_max or steps < 1:
            raise ValueError("curriculum needs 0 < start_min < start_max and steps >= 1")
        if isinstance(base, LossSecondMoment):
            raise ValueError(
                "a curriculum cannot wrap importance sampling: use uniform_t, log_normal or logit_normal"
            )
        self.base, self.start, self.steps = base, (start_min, start_max), steps

    def set_step(self, step: int) -> None:
        self.step = step
        self.base.set_step(step)

    def sigma_range(self, schedule: NoiseSchedule) -> tuple[float, float]:
        """The allowed [sigma_min, sigma_max] at the current step."""
        full = schedule.sigma(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
        f = min(1.0, self.step / self.steps)
        lo, hi = (
            math.exp((1 - f) * math.log(s) + f * math.log(e))
            for s, e in zip(self.start, full, strict=True)
        )
        return lo, hi

    def forward(
        self, n: int, schedule: NoiseSchedule, device: torch.device, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        if self.step >= self.steps:
            return self.base(n, schedule, device, generator)
        lo, hi = self.sigma_range(schedule)
        sigmas, weights, have = [], [], 0
        for _ in range(100):
            sigma, weight = self.base(n, schedule, device, generator)
            keep = (sigma >= lo) & (sigma <= hi)
            sigmas.append(sigma[keep])
            weights.append(weight[keep])
            have += int(keep.sum())
            if have >= n:
                break
        else:  # the base almost never draws in range: fall back to log-uniform levels in it
            u = torch.rand(n, device=device, generator=generator)
            sigma = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            return sigma, torch.ones(n, device=device)
        return torch.cat(sigmas)[:n], torch.cat(weights)[:n]

    def update(self, losses: Tensor) -> None:
        self.base.update(losses)
