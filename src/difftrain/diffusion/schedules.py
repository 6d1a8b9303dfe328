"""Noise schedules: each answers sigma(t), alpha_bar(t) and log_snr(t) for t in [0, 1].

One representation underneath: a schedule is its log-SNR as a function of t. A VP sample
x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps is, divided by sqrt(alpha_bar), the VE
sample x0 + sigma eps with sigma^2 = (1 - alpha_bar) / alpha_bar = exp(-log_snr)
(Karras et al. 2022, Sec. 2). Samplers and losses work in sigma and never special-case a schedule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class NoiseSchedule:
    """Base class: subclasses define `log_snr(t)`; everything else follows from it."""

    def log_snr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.log_snr(t))

    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(t))

    def timesteps(self, steps: int, spacing: str = "leading") -> Tensor:
        """`steps` decreasing values of t in [0, 1] at which a sampler evaluates the model."""
        if steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {steps}")
        if spacing != "linspace":
            raise ValueError(
                f"{type(self).__name__} supports spacing='linspace' only, got {spacing!r}"
            )
        return torch.linspace(1, 0, steps, dtype=torch.float64)

    def sampling_sigmas(self, steps: int, spacing: str = "leading") -> Tensor:
        """Decreasing noise levels for a sampler: `steps` levels followed by a final 0, shape (steps + 1,)."""
        t = self.timesteps(steps, spacing)
        sigmas = torch.exp(-0.5 * self.log_snr(t.double()))
        return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


class DiscreteSchedule(NoiseSchedule):
    """A DDPM-style schedule of T betas (Ho et al. 2020); t in [0, 1] maps to index t (T - 1).

    Between the T training levels, log-SNR is interpolated linearly in t, so the schedule is
    defined for continuous t and matches the discrete alphas_cumprod exactly at t = i / (T - 1).
    """

    def __init__(self, betas: Tensor):
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError("betas must be a 1-D tensor with at least 2 entries")
        self.betas = betas.double()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.log_snrs = torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def log_snr(self, t: Tensor) -> Tensor:
        pos = t.double().clamp(0, 1) * (self.num_timesteps - 1)
        lo = pos.floor().long().clamp(max=self.num_timesteps - 2)
        table = self.log_snrs.to(t.device)
        out = torch.lerp(table[lo], table[lo + 1], pos - lo)
        return out.to(t.dtype if t.is_floating_point() else torch.float32)

    def timesteps(self, steps: int, spacing: str = "leading") -> Tensor:
        """Training indices chosen as diffusers does (`timestep_spacing`), as t in [0, 1]."""
        T = self.num_timesteps
        if not 1 <= steps <= T:
            raise ValueError(f"sampler steps must be in [1, {T}] for this schedule, got {steps}")
        if spacing == "leading":  # DDIM paper, diffusers' default
            idx = torch.arange(steps, dtype=torch.float64) * (T // steps)
        elif spacing == "trailing":  # Lin et al. 2023, Table 2
            idx = torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1
        elif spacing == "linspace":
            idx = torch.linspace(0, T - 1, steps, dtype=torch.float64).round()
        else:
            raise ValueError(
                f"unknown spacing {spacing!r}: use 'leading', 'trailing' or 'linspace'"
            )
        return idx.sort(descending=True).values / (T - 1)


class CosineSchedule(DiscreteSchedule):
    """The cosine schedule of Nichol & Dhariwal 2021 (Eq. 17), betas clipped at `max_beta`."""

    def __init__(self, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        def f(i: Tensor) -> Tensor:
            return torch.cos((i / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        i = torch.arange(num_timesteps, dtype=torch.float64)
        betas = (1 - f(i + 1) / f(i)).clamp(max=max_beta)
        super().__init__(betas)
