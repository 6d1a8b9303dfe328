"""The denoising loss (Karras et al. 2022, Eq. 8, in the raw network's output space)."""

from __future__ import annotations

from torch import Tensor

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.objectives import expand_like


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    class_labels: Tensor | None = None,
) -> Tensor:
    """Per-example mean squared error of F against its target, shape (B,).

    x0 and noise are (B, C, H, W); sigma is (B,). The noisy input is x0 + sigma * noise.
    """
    x = x0 + expand_like(sigma, x0) * noise
    f = denoiser.raw(x, sigma, class_labels).float()
    target = denoiser.objective.target(x0, x, sigma).float()
    return (f - target).square().flatten(1).mean(1)
