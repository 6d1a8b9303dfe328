"""Prediction targets, written as preconditioning (Karras et al. 2022, Sec. 5 and Table 1).

Every objective gives the scalings that turn the raw network F into a denoiser,
    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
where x = x0 + sigma eps is the VE-form noisy image. The regression target for F follows:
(x0 - c_skip x) / c_out. Every objective feeds the network c_noise = log(sigma) / 4.
"""

from __future__ import annotations

import torch
from torch import Tensor

Scalings = tuple[Tensor, Tensor, Tensor, Tensor]


def expand_like(s: Tensor, x: Tensor) -> Tensor:
    """Shape per-example scalars (B,) to broadcast against x (B, ...)."""
    return s.view(-1, *[1] * (x.ndim - 1))


class Objective:
    """Base class: subclasses return (c_skip, c_out, c_in, c_noise) for a noise level."""

    name: str = "objective"
    defined_at_zero_snr: bool = True  # can the target be predicted from pure noise?

    def scalings(self, sigma: Tensor) -> Scalings:
        raise NotImplementedError

    def target(self, x0: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        """What the raw network should output for the noisy input x = x0 + sigma eps."""
        c_skip, c_out, _, _ = self.scalings(sigma)
        return raw_target(x0, x, c_skip, c_out)


def raw_target(x0: Tensor, x: Tensor, c_skip: Tensor, c_out: Tensor) -> Tensor:
    """(x0 - c_skip x) / c_out: the F for which D = c_skip x + c_out F is exactly x0."""
    return (x0 - expand_like(c_skip, x) * x) / expand_like(c_out, x)


def _vp_in(sigma: Tensor) -> Tensor:
    """c_in that turns x = x0 + sigma eps into the variance-preserving x_t = x / sqrt(1 + sigma^2)."""
    return torch.rsqrt(1 + sigma**2)


class EpsObjective(Objective):
    """Predict the noise eps (Ho et al. 2020): D = x - sigma F."""

    name = "eps"
    defined_at_zero_snr = (
        False  # at SNR 0 the input is the noise itself; x0 = x - sigma eps is lost
    )

    def scalings(self, sigma: Tensor) -> Scalings:
        return torch.ones_like(sigma), -sigma, _vp_in(sigma), sigma.log() / 4


class X0Objective(Objective):
    """Predict the clean image x0 directly: D = F."""

    name = "x0"

    def scalings(self, sigma: Tensor) -> Scalings:
        return torch.zeros_like(sigma), torch.ones_like(sigma), _vp_in(sigma), sigma.log() / 4


class VObjective(Objective):
    """Predict v = alpha eps - sigma_t x0 (Salimans & Ho 2022, Sec. 4): D = x / (1 + s^2) - s F / sqrt(1 + s^2)."""

    name = "v"

    def scalings(self, sigma: Tensor) -> Scalings:
        c_in = _vp_in(sigma)
        return c_in**2, -sigma * c_in, c_in, sigma.log() / 4


class EDMObjective(Objective):
    """EDM preconditioning (Karras et al. 2022, Table 1): unit-variance input and target for data std sigma_data."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def scalings(self, sigma: Tensor) -> Scalings:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data * torch.rsqrt(sigma**2 + sd2)
        c_in = torch.rsqrt(sigma**2 + sd2)
        return c_skip, c_out, c_in, sigma.log() / 4


class FlowObjective(Objective):
    """Predict the velocity eps - x0 of the straight path x_t = (1 - t) x0 + t eps (Liu et al. 2023; Lipman et al. 2023).

    In VE form t = sigma / (1 + sigma), so x_t = x / (1 + sigma) and D = (x - sigma F) / (1 + sigma).
    """

    name = "flow"

    def scalings(self, sigma: Tensor) -> Scalings:
        c_in = 1 / (1 + sigma)
        return c_in, -sigma * c_in, c_in, sigma.log() / 4


def check_compatible(schedule: object, objective: Objective) -> None:
    """Fail at start-up on a schedule/objective pair that cannot train."""
    if getattr(schedule, "zero_terminal_snr", False) and not objective.defined_at_zero_snr:
        raise ValueError(
            f"schedule.zero_terminal_snr=true with objective={objective.name}: {objective.name}-prediction "
            "is undefined at the last step, where the input is pure noise (Lin et al. 2023, Sec. 3.2). "
            "Use objective=v (or x0, edm, flow), or set schedule.zero_terminal_snr=false"
        )
