"""Samplers on data distributions whose ideal denoiser is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.generate import Diffusion
from difftrain.diffusion.objectives import X0Objective
from difftrain.diffusion.samplers import (
    Sampler,
    ancestral_step,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from difftrain.diffusion.schedules import CosineSchedule, EDMSchedule

MU, S = 0.5, 0.3
N = 20_000


def gaussian_denoiser(x, sigma, cond=None):
    """E[x0 | x] for x0 ~ N(MU, S^2) and x = x0 + sigma * eps."""
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


MODES, WEIGHTS, MODE_STD = torch.tensor([-1.0, 1.0]), torch.tensor([0.3, 0.7]), 0.1


def mixture_denoiser(x, sigma, cond=None):
    """E[x0 | x] for x0 from a two-component Gaussian mixture."""
    var = MODE_STD**2 + sigma**2
    logp = torch.log(WEIGHTS) - (x[..., None] - MODES) ** 2 / (2 * var)  # (..., 2)
    r = torch.softmax(logp, dim=-1)
    means = MODES + MODE_STD**2 / var * (x[..., None] - MODES)
    return (r * means).sum(-1)


NOISE = torch.randn(N, 1, 1, 1, generator=torch.Generator().manual_seed(0))


def draw(solver, steps, denoiser, schedule=None, spacing="karras", **options):
    sampler = Sampler(lambda *a, **k: solver(*a, **k, **options), steps=steps, spacing=spacing)
    x, nfe = sampler(
        denoiser, NOISE, schedule or EDMSchedule(), generator=torch.Generator().manual_seed(1)
    )
    return x.flatten(), nfe


def exact_gaussian_samples(schedule=None, spacing="karras", steps=2) -> torch.Tensor:
    """Where the probability-flow ODE takes NOISE exactly: x0 = MU + S (x - MU) / sqrt(S^2 + sigma^2)."""
    sigma = Sampler(sample_euler, steps=steps, spacing=spacing).sigmas(schedule or EDMSchedule())[0]
    x = NOISE.flatten() * (sigma**2 + 1).sqrt()
    return MU + S * (x - MU) / (S**2 + sigma**2).sqrt()


DETERMINISTIC = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}
STOCHASTIC = {
    "ddpm": sample_ddpm,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
}


def std_error(solver, steps):
    """Relative error of the samples' std against the exact ODE solution from the same noise."""
    x, nfe = draw(solver, steps, gaussian_denoiser)
    exact = exact_gaussian_samples().std().item()
    return abs(x.std().item() - exact) / exact, nfe


@pytest.mark.parametrize(
    "name, steps, rel", [("euler", 100, 0.05), ("heun", 50, 0.01), ("dpmpp_2m", 100, 0.01)]
)
def test_deterministic_samplers_match_the_gaussian_at_about_100_nfe(name, steps, rel):
    x, nfe = draw(DETERMINISTIC[name], steps, gaussian_denoiser)
    exact = exact_gaussian_samples()
    assert nfe <= 100
    assert x.mean() == pytest.approx(exact.mean().item(), abs=0.002)
    assert x.std() == pytest.approx(exact.std().item(), rel=rel), f"{name} at NFE {nfe}"
    assert x.mean() == pytest.approx(MU, abs=0.01) and x.std() == pytest.approx(S, rel=rel + 0.01)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_error_shrinks_as_nfe_grows(name):
    errors = [std_error(DETERMINISTIC[name], steps)[0] for steps in (8, 16, 32, 64)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


def test_higher_order_samplers_beat_euler_at_equal_nfe():
    euler, _ = std_error(sample_euler, 64)
    heun, nfe = std_error(sample_heun, 32)  # 63 evaluations
    dpm, _ = std_error(sample_dpmpp_2m, 64)
    assert nfe <= 64
    assert heun < euler / 2 and dpm < euler / 4, (euler, heun, dpm)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_match_the_gaussian(name):
    x, _ = draw(STOCHASTIC[name], 500, gaussian_denoiser)
    assert x.mean() == pytest.approx(MU, abs=0.01)
    assert x.std() == pytest.approx(S, rel=0.025)


@pytest.mark.parametrize("name", {**DETERMINISTIC, **STOCHASTIC})
def test_no_sampler_loses_a_mode(name):
    solver = {**DETERMINISTIC, **STOCHASTIC}[name]
    x, _ = draw(solver, 64, mixture_denoiser)
    share = (x > 0).float().mean().item()
    assert share == pytest.approx(WEIGHTS[1].item(), abs=0.02)
    near = ((x[:, None] - MODES).abs() < 4 * MODE_STD).any(1).float().mean().item()
    assert near > 0.98, f"{name}: only {near:.3f} of the samples lie near a mode"


def test_ddim_with_the_discrete_cosine_schedule_converges():
    errors = []
    for steps in (10, 50, 250):
        x, _ = draw(sample_ddim, steps, gaussian_denoiser, CosineSchedule(), spacing="leading")
        exact = exact_gaussian_samples(CosineSchedule(), "leading", steps).std().item()
        errors.append(abs(x.std().item() - exact) / exact)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01


def test_ddim_eta0_is_deterministic_and_eta1_is_seeded():
    schedule, noise = CosineSchedule(), torch.randn(8, 1, 4, 4)

    def run(solver, seed):
        x, _ = Sampler(solver, steps=10)(
            gaussian_denoiser, noise, schedule, generator=torch.Generator().manual_seed(seed)
        )
        return x

    assert torch.equal(run(sample_ddim, 0), run(sample_ddim, 1))
    assert torch.equal(run(sample_ddpm, 0), run(sample_ddpm, 0))
    assert not torch.equal(run(sample_ddpm, 0), run(sample_ddpm, 1))


class GaussianNet(torch.nn.Module):
    """A raw net that, under x0-prediction, makes the denoiser exactly gaussian_denoiser."""

    sample_shape, num_classes, augment_dim = (1, 4, 4), 0, 0

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))  # gives generate() a device

    def forward(self, x_in, c_noise):
        sigma = torch.exp(4 * c_noise).view(-1, 1, 1, 1)  # undo X0Objective's c_noise and c_in
        return gaussian_denoiser(x_in * (1 + sigma**2).sqrt(), sigma) * self.scale


def test_generate_same_seed_same_images_whatever_the_batch_size_or_split():
    denoiser = Denoiser(GaussianNet(), X0Objective())
    diffusion = Diffusion(denoiser, CosineSchedule(), Sampler(sample_ddim, steps=5))
    a, _ = diffusion.generate(10, seed=3, batch_size=10)
    b, _ = diffusion.generate(10, seed=3, batch_size=3)
    c, _ = diffusion.generate(10, seed=4, batch_size=10)
    first, _ = diffusion.generate(4, seed=3)
    rest, _ = diffusion.generate(6, seed=3, start=4)  # another process's share
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, torch.cat([first, rest]))
    assert not torch.allclose(a, c)
    assert a.std() == pytest.approx(S, rel=0.5)  # the Gaussian's spread, roughly, in 5 steps


def test_ancestral_step_splits_the_variance():
    sigma, sigma_next = torch.tensor(2.0), torch.tensor(1.0)
    for eta in (0.0, 0.5, 1.0):
        down, up = ancestral_step(sigma, sigma_next, eta)
        torch.testing.assert_close(down**2 + up**2, sigma_next**2)
    _, up = ancestral_step(sigma, sigma_next, 1.0)  # DDPM's posterior std, in VE form
    torch.testing.assert_close(up**2, sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)


def test_heun_churn_adds_noise_only_inside_its_window():
    sigmas = Sampler(sample_heun, steps=32, spacing="karras").sigmas(EDMSchedule())
    plain = sample_heun(gaussian_denoiser, NOISE * 80, sigmas)
    outside = sample_heun(
        gaussian_denoiser, NOISE * 80, sigmas, s_churn=40, s_tmin=100, s_tmax=math.inf
    )
    torch.testing.assert_close(plain, outside)
    churned = sample_heun(
        gaussian_denoiser,
        NOISE * 80,
        sigmas,
        s_churn=40,
        generator=torch.Generator().manual_seed(2),
    )
    assert not torch.allclose(plain, churned)
    assert churned.std().item() == pytest.approx(S, rel=0.1)


def test_a_solver_tells_its_steps_for_a_budget_of_net_evaluations():
    from difftrain.diffusion.samplers import sample_dpmpp_2m, sample_euler, sample_heun, steps_for

    assert steps_for(sample_euler, 10) == 10 and steps_for(sample_heun, 19) == 10
    assert sample_dpmpp_2m.multistep and not getattr(sample_euler, "multistep", False)
