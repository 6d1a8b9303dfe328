"""Prediction targets, written as preconditioning (Karras et al. 2022, Sec. 5 and Table 1).

Every objective gives the scalings that turn the raw network F into a denoiser,
    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
where x = x0 + sigma eps is the VE-form noisy image. The regression target for F follows:
(x0 - c_skip x) / c_out. eps-prediction is c_skip = 1, c_out = -sigma.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_like(s: Tensor, x: Tensor) -> Tensor:
    """Shape per-example scalars (B,) to broadcast against x (B, ...)."""
    return s.view(-1, *[1] * (x.ndim - 1))


class Objective:
    """Base class: subclasses return (c_skip, c_out, c_in, c_noise) for a noise level."""

    name: str = "objective"

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def target(self, x0: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """What the raw network should output for the noisy input x = x0 + sigma eps."""
        c_skip, c_out, _, _ = self.scalings(sigma)
        return (x0 - expand_like(c_skip, x) * x) / expand_like(c_out, x)


class EpsObjective(Objective):
    """Predict the noise eps (Ho et al. 2020), on VP-scaled inputs x / sqrt(1 + sigma^2)."""

    name = "eps"

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = torch.rsqrt(1 + sigma**2)
        c_noise = torch.log(sigma) / 4
        return c_skip, c_out, c_in, c_noise
