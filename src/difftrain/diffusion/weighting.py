"""Loss weightings lambda(sigma), each defined on the x0-space error and applied in F space.

The denoiser's error is c_out times the raw network's: D - x0 = c_out (F - target). A weighting
defined on ||D - x0||^2 therefore weighs the F-space loss by lambda(sigma) c_out^2, which is how
min-SNR and P2 stay correct for eps, x0, v, EDM and flow targets alike.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Weighting:
    """Base class: `x0_weight(sigma)`; calling it gives the F-space weight for an objective's c_out."""

    def x0_weight(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, sigma: Tensor, c_out: Tensor) -> Tensor:
        return self.x0_weight(sigma) * c_out**2


class Uniform(Weighting):
    """Weight 1 on the objective's own loss (F space): eps-MSE for eps, v-MSE for v, ..."""

    def __call__(self, sigma: Tensor, c_out: Tensor) -> Tensor:
        return torch.ones_like(sigma)


class MinSNR(Weighting):
    """min(SNR, gamma) on the x0 error (Hang et al. 2023, Eq. 8); eps: min(SNR, gamma) / SNR."""

    def __init__(self, gamma: float = 5.0):
        self.gamma = gamma

    def x0_weight(self, sigma: Tensor) -> Tensor:
        return torch.clamp(sigma**-2, max=self.gamma)


class P2(Weighting):
    """Perception-prioritized weighting (Choi et al. 2022, Eq. 8): 1 / (k + SNR)^gamma on the eps loss."""

    def __init__(self, gamma: float = 1.0, k: float = 1.0):
        self.gamma, self.k = gamma, k

    def x0_weight(self, sigma: Tensor) -> Tensor:
        snr = sigma**-2
        return snr / (self.k + snr) ** self.gamma


class EDMWeighting(Weighting):
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022, Table 1)."""

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def x0_weight(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
