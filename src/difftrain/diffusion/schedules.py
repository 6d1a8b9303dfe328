"""Noise schedules: each answers sigma(t), alpha_bar(t) and log_snr(t) for t in [0, 1].

One representation underneath: a schedule is its log-SNR as a function of t. A VP sample
x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps is, divided by sqrt(alpha_bar), the VE
sample x0 + sigma eps with sigma^2 = (1 - alpha_bar) / alpha_bar = exp(-log_snr)
(Karras et al. 2022, Sec. 2). Samplers and losses work in sigma and never special-case a schedule.

Every schedule takes `base_resolution` and `resolution`: with base_resolution set, log-SNR is
shifted by 2 log(base_resolution / resolution) (Hoogeboom et al. 2023, "simple diffusion", Sec. 3.1), so a
schedule tuned at one resolution keeps its signal-to-noise profile at another. The configs set
`resolution` from the number of values per sample (the side of a square image with as many per
channel: sqrt(T H W) for clips), so the shift is log(base values / values) for any media.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# The smallest alpha_bar used where a schedule reaches zero terminal SNR, as diffusers does:
# it keeps sigma finite (4096) at t = 1 while the SNR there is 6e-8.
MIN_ALPHA_BAR = 2.0**-24


def resolution_shift(base_resolution: float | None, resolution: float | None) -> float:
    """The log-SNR shift 2 log(base_resolution / resolution); 0 when base_resolution is None."""
    if base_resolution is None:
        return 0.0
    if not resolution:
        raise ValueError("schedule.base_resolution needs schedule.resolution (the image size)")
    return 2 * math.log(base_resolution / resolution)


class NoiseSchedule:
    """Base class: subclasses define `_log_snr(t)`; everything else follows from it."""

    zero_terminal_snr: bool = False

    def __init__(self, log_snr_shift: float = 0.0):
        self.log_snr_shift = log_snr_shift

    def _log_snr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        return self._log_snr(t) + self.log_snr_shift

    def sigma(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.log_snr(t))

    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(t))

    def timesteps(self, steps: int, spacing: str = "leading") -> Tensor:
        """`steps` decreasing values of t in [0, 1] at which a sampler evaluates the model."""
        _check_steps(steps)
        i = torch.arange(steps, 0, -1, dtype=torch.float64)
        if spacing == "leading":  # the continuous analogues of diffusers' spacings
            return (i - 1) / steps
        if spacing == "trailing":
            return i / steps
        if spacing == "linspace":
            return torch.linspace(1, 0, steps, dtype=torch.float64)
        raise ValueError(f"unknown spacing {spacing!r}: use leading, trailing, linspace or karras")

    def sampling_sigmas(
        self,
        steps: int,
        spacing: str = "linspace",
        rho: float = 7.0,
        sigma_max: float | None = None,
    ) -> Tensor:
        """Decreasing noise levels for a sampler: at most `steps` levels, then a final 0.

        spacing="karras" spaces `steps` levels between sigma(0) and min(sigma(1), sigma_max) by
        Karras et al. 2022, Eq. 5. The other spacings take the schedule's own levels up to
        sigma_max (see `cap_sigmas`), so there may be fewer than `steps`.
        """
        if spacing == "karras":
            _check_steps(steps)
            lo, hi = self.sigma(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist()
            sigmas = karras_sigmas(lo, hi if sigma_max is None else min(hi, sigma_max), steps, rho)
        else:
            sigmas = cap_sigmas(self.sigma(self.timesteps(steps, spacing).double()), sigma_max)
        return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def cap_sigmas(sigmas: Tensor, sigma_max: float | None) -> Tensor:
    """Decreasing levels without those above sigma_max. Where that leaves the top level below
    sigma_max / 2, the dropped levels are replaced by one at sigma_max, so sampling still starts
    where the data is invisible and no step is much shorter than the next."""
    if sigma_max is None or sigmas[0] <= sigma_max:
        return sigmas
    below = sigmas[sigmas <= sigma_max]
    if len(below) and below[0] >= sigma_max / 2:
        return below
    return torch.cat([below.new_full((1,), sigma_max), below])


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """`steps` noise levels from sigma_max down to sigma_min, spaced by Karras et al. 2022, Eq. 5."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"sampler steps must be >= 1, got {steps}")


class DiscreteSchedule(NoiseSchedule):
    """A DDPM-style schedule of T betas (Ho et al. 2020); t in [0, 1] maps to index t (T - 1).

    Between the T training levels log-SNR is interpolated linearly in t, so the schedule is
    defined for continuous t and matches the discrete alphas_cumprod exactly at t = i / (T - 1).
    With zero_terminal_snr the betas are rescaled so that alpha_bar(1) = 0 (Lin et al. 2023,
    Algorithm 1); the log-SNR table then stops at alpha_bar = MIN_ALPHA_BAR.
    """

    def __init__(
        self,
        betas: Tensor,
        zero_terminal_snr: bool = False,
        base_resolution: int | None = None,
        resolution: int | None = None,
    ):
        super().__init__()
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError("betas must be a 1-D tensor with at least 2 entries")
        alphas_cumprod = torch.cumprod(1.0 - betas.double(), dim=0)
        if shift := resolution_shift(base_resolution, resolution):  # in the table, before a rescale
            alphas_cumprod = torch.sigmoid(torch.logit(alphas_cumprod) + shift)
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        self.zero_terminal_snr = zero_terminal_snr
        self.alphas_cumprod = alphas_cumprod
        self.betas = 1 - alphas_cumprod / torch.cat(
            [alphas_cumprod.new_ones(1), alphas_cumprod[:-1]]
        )
        self.log_snrs = torch.logit(alphas_cumprod.clamp(min=MIN_ALPHA_BAR))

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def _log_snr(self, t: Tensor) -> Tensor:
        pos = t.double().clamp(0, 1) * (self.num_timesteps - 1)
        lo = pos.floor().long().clamp(max=self.num_timesteps - 2)
        table = self.log_snrs.to(t.device)
        out = torch.lerp(table[lo], table[lo + 1], pos - lo)
        return out.to(t.dtype if t.is_floating_point() else torch.float32)

    def timesteps(self, steps: int, spacing: str = "leading") -> Tensor:
        """Training indices chosen as diffusers' `timestep_spacing` does, as t in [0, 1]."""
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
                f"unknown spacing {spacing!r}: use leading, trailing, linspace or karras"
            )
        return idx.sort(descending=True).values / (T - 1)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Shift and scale sqrt(alpha_bar) so the last is 0 and the first unchanged (Lin et al. 2023, Alg. 1)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


def betas_for_alpha_bar(
    alpha_bar: Callable[[Tensor], Tensor], num_timesteps: int, max_beta: float
) -> Tensor:
    """Betas whose cumulative product follows alpha_bar(t) at t = i / T, each clipped at max_beta."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    ab = alpha_bar(t)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


class LinearSchedule(DiscreteSchedule):
    """DDPM's betas, linear from beta_start to beta_end (Ho et al. 2020, Sec. 4)."""

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        zero_terminal_snr: bool = False,
        base_resolution: int | None = None,
        resolution: int | None = None,
    ):
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        super().__init__(betas, zero_terminal_snr, base_resolution, resolution)


class ScaledLinearSchedule(DiscreteSchedule):
    """Latent diffusion's betas: linear in sqrt(beta) (Rombach et al. 2022; diffusers' scaled_linear)."""

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        zero_terminal_snr: bool = False,
        base_resolution: int | None = None,
        resolution: int | None = None,
    ):
        betas = (
            torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        )
        super().__init__(betas, zero_terminal_snr, base_resolution, resolution)


class CosineSchedule(DiscreteSchedule):
    """The cosine schedule of Nichol & Dhariwal 2021 (Eq. 17), betas clipped at `max_beta`."""

    def __init__(
        self,
        num_timesteps: int = 1000,
        s: float = 0.008,
        max_beta: float = 0.999,
        zero_terminal_snr: bool = False,
        base_resolution: int | None = None,
        resolution: int | None = None,
    ):
        def alpha_bar(t: Tensor) -> Tensor:
            return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2

        betas = betas_for_alpha_bar(alpha_bar, num_timesteps, max_beta)
        super().__init__(betas, zero_terminal_snr, base_resolution, resolution)


class SigmoidSchedule(DiscreteSchedule):
    """The sigmoid schedule of Jabri et al. 2022 (RIN, Alg. 3): alpha_bar falls along a sigmoid.

    alpha_bar(t) = (v(end) - v(t (end - start) + start)) / (v(end) - v(start)), v(x) = sigmoid(x / tau).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        start: float = -3.0,
        end: float = 3.0,
        tau: float = 1.0,
        max_beta: float = 0.999,
        zero_terminal_snr: bool = False,
        base_resolution: int | None = None,
        resolution: int | None = None,
    ):
        v_start, v_end = 1 / (1 + math.exp(-start / tau)), 1 / (1 + math.exp(-end / tau))

        def alpha_bar(t: Tensor) -> Tensor:
            return (
                (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
            ).clamp(min=1e-9)

        betas = betas_for_alpha_bar(alpha_bar, num_timesteps, max_beta)
        super().__init__(betas, zero_terminal_snr, base_resolution, resolution)


class EDMSchedule(NoiseSchedule):
    """Karras et al. 2022 (EDM): sigma(t) from sigma_min to sigma_max, warped by rho (Eq. 5).

    Sampling at t = linspace(1, 0, steps) gives EDM's discretization exactly. EDM trains on
    log-normal noise levels: pair it with `noise_levels=log_normal`.
    """

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        base_resolution: int | None = None,
        resolution: int | None = None,
    ):
        super().__init__(resolution_shift(base_resolution, resolution))
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def _log_snr(self, t: Tensor) -> Tensor:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigma = (lo + t.clamp(0, 1) * (hi - lo)) ** self.rho
        return -2 * torch.log(sigma)
