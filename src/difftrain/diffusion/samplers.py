"""Samplers: pure functions over a denoiser and a decreasing tensor of noise levels.

All share one signature, in the style of k-diffusion:
    sample_X(denoiser, x, sigmas, *, class_labels=None, generator=None, callback=None, **options)
where `denoiser(x, sigma, class_labels)` returns an x0-estimate, `x` is the initial noise already
scaled to sigmas[0], and `sigmas` (steps + 1,) ends with 0. They work in the VE form x = x0 + sigma eps,
so every sampler runs with every schedule and objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from difftrain.diffusion.schedules import NoiseSchedule

DenoiserFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
Callback = Callable[[dict], None]


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """Split a step to sigma_next into a deterministic part (sigma_down) and fresh noise (sigma_up).

    sigma_up is DDIM's sigma_t(eta) (Song et al. 2021, Eq. 16) in VE form; eta=1 gives DDPM's posterior.
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, sigma_next.new_zeros(())
    sigma_up = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt()
    sigma_up = torch.minimum(sigma_up, sigma_next)
    sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


@torch.no_grad()
def sample_ddim(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12): deterministic for eta=0, DDPM's ancestral sampler for eta=1.

    In VE form the deterministic part is an Euler step of the probability-flow ODE to sigma_down.
    """
    for i in range(len(sigmas) - 1):
        x0 = denoiser(x, sigmas[i], class_labels)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x0 + (x - x0) * (sigma_down / sigmas[i])
        if sigma_up > 0:
            x = x + sigma_up * torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": x0})
    return x


sample_ddpm = partial(sample_ddim, eta=1.0)
sample_ddpm.__doc__ = "DDPM's ancestral sampler (Ho et al. 2020, Alg. 2): DDIM with eta=1."


class _CountingDenoiser:
    """Wraps a denoiser to count network evaluations (NFE)."""

    def __init__(self, denoiser: DenoiserFn):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma, class_labels)


@dataclass(frozen=True)
class Sampler:
    """A solver with its step count and timestep spacing: what `conf/sampler/*.yaml` builds."""

    solver: Callable[..., Tensor]
    steps: int = 50
    spacing: str = "leading"

    def sigmas(self, schedule: NoiseSchedule) -> Tensor:
        return schedule.sampling_sigmas(self.steps, self.spacing)

    def __call__(
        self,
        denoiser: DenoiserFn,
        noise: Tensor,
        schedule: NoiseSchedule,
        *,
        class_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
    ) -> tuple[Tensor, int]:
        """Samples (B, C, H, W) from standard-normal `noise` and the number of network evaluations."""
        sigmas = self.sigmas(schedule).to(noise.device)
        counting = _CountingDenoiser(denoiser)
        x = noise * (sigmas[0] ** 2 + 1).sqrt()  # the VP prior N(0, 1), in VE form
        x = self.solver(
            counting, x, sigmas, class_labels=class_labels, generator=generator, callback=callback
        )
        return x, counting.nfe
