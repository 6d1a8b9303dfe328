"""Samplers on a Gaussian data distribution, where the ideal denoiser is known exactly."""

from __future__ import annotations

import pytest
import torch

from difftrain.diffusion import CosineSchedule, Sampler, sample_ddim, sample_ddpm
from difftrain.diffusion.generate import generate
from difftrain.diffusion.samplers import ancestral_step

MU, S = 0.5, 0.3


def gaussian_denoiser(x, sigma, class_labels=None):
    """E[x0 | x] for x0 ~ N(MU, S^2) and x = x0 + sigma * eps."""
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


@pytest.mark.parametrize("solver, steps, rel", [(sample_ddim, 250, 0.01), (sample_ddpm, 250, 0.03)])
def test_samples_match_the_data_distribution(solver, steps, rel):
    sampler = Sampler(solver, steps=steps)
    noise = torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    x, nfe = sampler(
        gaussian_denoiser, noise, CosineSchedule(), generator=torch.Generator().manual_seed(1)
    )
    assert nfe == steps
    assert x.mean() == pytest.approx(MU, abs=0.01)
    assert x.std() == pytest.approx(S, rel=rel)


def test_ddim_error_shrinks_with_more_steps():
    noise = torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    errors = []
    for steps in (5, 20, 100):
        x, _ = Sampler(sample_ddim, steps=steps)(gaussian_denoiser, noise, CosineSchedule())
        errors.append(abs(x.std().item() - S))
    assert errors[0] > errors[1] > errors[2]


def test_ddim_eta0_is_deterministic_and_eta1_is_seeded():
    schedule, noise = CosineSchedule(), torch.randn(8, 1, 4, 4)
    a, _ = Sampler(sample_ddim, steps=10)(
        gaussian_denoiser, noise, schedule, generator=torch.Generator().manual_seed(0)
    )
    b, _ = Sampler(sample_ddim, steps=10)(
        gaussian_denoiser, noise, schedule, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(a, b)
    ddpm = Sampler(sample_ddpm, steps=10)
    c, _ = ddpm(gaussian_denoiser, noise, schedule, generator=torch.Generator().manual_seed(0))
    d, _ = ddpm(gaussian_denoiser, noise, schedule, generator=torch.Generator().manual_seed(0))
    e, _ = ddpm(gaussian_denoiser, noise, schedule, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, d) and not torch.equal(c, e)


def test_generate_same_seed_same_images_whatever_the_batch_size():
    sampler, schedule = Sampler(sample_ddim, steps=5), CosineSchedule()
    a, _ = generate(gaussian_denoiser, schedule, sampler, (1, 4, 4), 10, seed=3, batch_size=10)
    b, _ = generate(gaussian_denoiser, schedule, sampler, (1, 4, 4), 10, seed=3, batch_size=3)
    c, _ = generate(gaussian_denoiser, schedule, sampler, (1, 4, 4), 10, seed=4, batch_size=10)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_ancestral_step_splits_the_variance():
    sigma, sigma_next = torch.tensor(2.0), torch.tensor(1.0)
    for eta in (0.0, 0.5, 1.0):
        down, up = ancestral_step(sigma, sigma_next, eta)
        torch.testing.assert_close(down**2 + up**2, sigma_next**2)
    _, up = ancestral_step(sigma, sigma_next, 1.0)  # DDPM's posterior std, in VE form
    torch.testing.assert_close(up**2, sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
