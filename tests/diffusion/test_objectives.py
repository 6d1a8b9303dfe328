"""Preconditioning and the loss: a network that outputs the true target denoises exactly."""

from __future__ import annotations

import torch
from torch import nn

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.loss import raw_error
from difftrain.diffusion.objectives import EpsObjective


class Oracle(nn.Module):
    """A 'network' that returns a fixed answer whatever it is asked."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def forward(self, x, c_noise, class_labels=None):
        return self.answer


def test_eps_target_is_the_noise_and_the_oracle_recovers_x0():
    torch.manual_seed(0)
    x0, noise, sigma = (
        torch.randn(4, 1, 8, 8),
        torch.randn(4, 1, 8, 8),
        torch.tensor([0.01, 0.5, 3.0, 80.0]),
    )
    objective = EpsObjective()
    x = x0 + sigma.view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(objective.target(x0, x, sigma), noise, rtol=1e-4, atol=1e-4)
    denoiser = Denoiser(Oracle(noise), objective)
    torch.testing.assert_close(denoiser(x, sigma), x0, rtol=1e-4, atol=1e-4)
    assert raw_error(denoiser, x0, sigma, noise)[0].shape == (4,)
    assert raw_error(denoiser, x0, sigma, noise)[0].max() < 1e-8


def test_network_sees_unit_variance_input():
    """c_in = 1 / sqrt(1 + sigma^2) makes x = x0 + sigma eps unit-variance for unit-variance data."""
    seen = {}

    class Probe(nn.Module):
        def forward(self, x, c_noise, class_labels=None):
            seen["x"] = x
            return torch.zeros_like(x)

    sigma = torch.full((10_000,), 5.0)
    x = torch.randn(10_000, 1, 1, 1) + sigma.view(-1, 1, 1, 1) * torch.randn(10_000, 1, 1, 1)
    Denoiser(Probe(), EpsObjective())(x, sigma)
    assert abs(seen["x"].std().item() - 1) < 0.03
