"""Losses: the weighted training loss in the raw network's output space, and a comparable x0 error."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.noise_levels import NoiseLevels
from difftrain.diffusion.objectives import expand_like, raw_target
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.diffusion.weighting import EDMWeighting, Weighting
from difftrain.nets.protocol import Cond
from difftrain.streams import WHOLE, Share


class DenoisingLoss(nn.Module):
    """lambda(sigma) c_out^2 ||F(c_in x; c_noise) - (x0 - c_skip x) / c_out||^2, x = x0 + sigma n,
    at injected noise levels (Karras et al. 2022, Eq. 2 and 8): the x0-space loss
    lambda ||D(x) - x0||^2 written in the raw net's output space, where it trains.

    The noise levels and the noise are drawn from `generator` for the whole global batch, and
    each process keeps its `share`: a step's randomness is the same however many processes
    share the batch, so a 2-process run trains like a 1-process run of the same global batch.
    """

    def __init__(self, noise_levels: NoiseLevels, weighting: Weighting):
        super().__init__()
        self.noise_levels, self.weighting = noise_levels, weighting

    def set_step(self, step: int) -> None:
        """The training step (the schedule step under a time budget): curricula follow it."""
        self.noise_levels.set_step(step)

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
        # Noise levels and noise, drawn for the global batch: this process keeps its share.
        n = len(x0) * share.world
        sigma, importance = map(share.of, self.noise_levels(n, schedule, x0.device, generator))
        noise = denoiser.noise(batch_noise(x0, share, generator))
        sigma = sigma.to(x0.dtype)
        # The raw net's error at x0 + sigma noise, weighted by lambda(sigma) c_out^2 (Eq. 8).
        error, c_out = raw_error(denoiser, x0, sigma, noise, cond)
        loss = self.weighting(sigma, c_out).float() * error
        self.noise_levels.update(loss.detach() if gather is None else gather(loss.detach()))
        return loss * importance, sigma


def batch_noise(x0: Tensor, share: Share, generator: torch.Generator | None) -> Tensor:
    """Standard-normal noise shaped like x0, drawn for the global batch (len(x0) x share.world
    examples, after its noise levels): this process's share."""
    n = len(x0) * share.world
    shape = (n, *x0.shape[1:])
    return share.of(torch.randn(shape, device=x0.device, dtype=x0.dtype, generator=generator))


def raw_error(
    denoiser: Denoiser, x0: Tensor, sigma: Tensor, noise: Tensor, cond: Cond | None = None
) -> tuple[Tensor, Tensor]:
    """The raw net's squared error ||F - target||^2 per example (B,) at x = x0 + sigma noise, and
    c_out (B,). The target (x0 - c_skip x) / c_out (Karras et al. 2022, Eq. 8) makes c_out^2 times
    this error the x0-space error ||D(x) - x0||^2 of the denoiser."""
    x = x0 + expand_like(sigma, x0) * noise
    c_skip, c_out, _, _ = denoiser.objective.scalings(sigma)
    f = denoiser(x, sigma, cond, raw=True).float()
    return example_mean((f - raw_target(x0, x, c_skip, c_out).float()).square(), cond), c_out


def example_mean(error: Tensor, cond: Cond | None = None) -> Tensor:
    """The mean of each example's elementwise error (B, *shape) -> (B,), leaving out the values
    that `cond` gives (`given_mask`, broadcastable: a clip's given frames): the net is not asked
    to predict them."""
    mask = None if cond is None else cond.get("given_mask")
    if mask is None:
        return error.flatten(1).mean(1)
    keep = (1 - mask.float()).expand_as(error)
    return (error * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp(min=1)


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
    error = example_mean((denoiser(x, sigma, cond).float() - x0.float()).square(), cond)
    return EDMWeighting(sigma_data).x0_weight(sigma.float()) * error
