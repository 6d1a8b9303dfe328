"""Losses: the weighted training loss in the raw network's output space, and a comparable x0 error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from difftrain.diffusion.denoiser import Cond, Denoiser
from difftrain.diffusion.noise_levels import NoiseLevels
from difftrain.diffusion.objectives import expand_like
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.diffusion.weighting import EDMWeighting, Weighting


@dataclass(frozen=True)
class Share:
    """Part `rank` of a global batch split in `world` equal parts (one per training process)."""

    rank: int = 0
    world: int = 1

    def of(self, values: Tensor) -> Tensor:
        """This part of `values`, drawn for the whole global batch (dim 0)."""
        size = len(values) // self.world
        return values[self.rank * size : (self.rank + 1) * size]


WHOLE = Share()  # one process: the whole batch


class DenoisingLoss(nn.Module):
    """lambda(sigma) c_out^2 ||F - target||^2 at injected noise levels (Karras et al. 2022, Eq. 8).

    The noise levels and the noise are drawn from `generator` for the whole global batch, and
    each process keeps its `share`: a step's randomness is the same however many processes
    share the batch, so a 2-process run trains like a 1-process run of the same global batch.
    """

    def __init__(self, noise_levels: NoiseLevels, weighting: Weighting):
        super().__init__()
        self.noise_levels, self.weighting = noise_levels, weighting

    def forward(
        self,
        denoiser: Denoiser,
        schedule: NoiseSchedule,
        x0: Tensor,
        cond: Cond | None = None,
        generator: torch.Generator | None = None,
        share: Share = WHOLE,
        gather: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-example weighted losses (B,) of clean x0 (B, *shape), and the levels drawn (B,).

        `gather` assembles the global batch's losses (rank order) for the noise-level sampler.
        """
        n = x0.shape[0] * share.world
        sigma, importance = self.noise_levels(n, schedule, x0.device, generator)
        noise = torch.randn(
            (n, *x0.shape[1:]), device=x0.device, dtype=x0.dtype, generator=generator
        )
        sigma, importance, noise = (
            share.of(sigma).to(x0.dtype),
            share.of(importance),
            share.of(noise),
        )
        error, c_out = denoiser.error(x0, sigma, noise, cond)
        loss = self.weighting(sigma, c_out).float() * error
        self.noise_levels.update(loss.detach() if gather is None else gather(loss.detach()))
        return loss * importance, sigma


@torch.no_grad()
def x0_error(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    cond: Cond | None = None,
    sigma_data: float = 0.5,
) -> Tensor:
    """EDM-weighted denoising error lambda(sigma) ||D(x0 + sigma noise) - x0||^2 per example, (B,).

    It does not depend on the objective, weighting or schedule, so it compares any two runs;
    EDM's lambda makes every noise level count about equally.
    """
    x = x0 + expand_like(sigma, x0) * noise
    error = (denoiser(x, sigma, cond).float() - x0.float()).square().flatten(1).mean(1)
    return EDMWeighting(sigma_data).x0_weight(sigma.float()) * error
