"""Parity with diffusers: schedules' alphas_cumprod and samplers' trajectories, step by step.

The same fixed eps-network drives both; diffusers works in its own coordinates (VP samples for
DDIM and DPM-Solver, VE for the Euler family), which are converted before comparing.
"""

from __future__ import annotations

import pytest
import torch

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.objectives import EpsObjective
from difftrain.diffusion.samplers import (
    Sampler,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from difftrain.diffusion.schedules import (
    CosineSchedule,
    LinearSchedule,
    ScaledLinearSchedule,
    rescale_zero_terminal_snr,
)

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize(
    "ours, config",
    [
        (LinearSchedule(), dict(beta_schedule="linear")),
        (
            ScaledLinearSchedule(),
            dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        ),
        (CosineSchedule(), dict(beta_schedule="squaredcos_cap_v2")),
    ],
)
def test_alphas_cumprod_match_ddpm_scheduler(ours, config):
    theirs = diffusers.DDPMScheduler(**config).alphas_cumprod
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs, rtol=1e-5, atol=1e-7)


def test_zero_terminal_snr_matches_diffusers_rescale():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as theirs

    for schedule in (LinearSchedule(), ScaledLinearSchedule(), CosineSchedule()):
        expected = torch.cumprod(1 - theirs(schedule.betas.clone()), 0)
        torch.testing.assert_close(
            rescale_zero_terminal_snr(schedule.alphas_cumprod), expected, rtol=1e-6, atol=1e-10
        )
        rescaled = type(schedule)(zero_terminal_snr=True)
        assert rescaled.alphas_cumprod[-1] == 0 and torch.isfinite(
            rescaled.sigma(torch.tensor(1.0))
        )


class FixedEps(torch.nn.Module):
    """A fixed, nonlinear eps-prediction f(x_vp, log sigma) shared by both implementations.

    Near the ideal eps for unit-variance Gaussian data, sqrt(1 - alpha_bar) x_vp, so trajectories
    stay O(1), plus a fixed random convolution through tanh.
    """

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.4
            )
            self.conv.bias.fill_(0.1)

    def eps(self, x_vp, log_sigma):
        sigma = log_sigma.exp().view(-1, 1, 1, 1)
        return sigma * torch.rsqrt(1 + sigma**2) * x_vp + 0.2 * torch.tanh(self.conv(x_vp))

    def forward(self, x_vp, c_noise, class_labels=None):  # difftrain's net signature
        return self.eps(x_vp, 4 * c_noise)


SCHEDULE = LinearSchedule()
LATENTS = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def diffusers_model(net, scheduler):
    alphas_cumprod = scheduler.alphas_cumprod.double()

    def model(x_vp, t):
        ac = alphas_cumprod[int(round(float(t)))]
        log_sigma = (0.5 * torch.log((1 - ac) / ac)).float()
        return net.eps(x_vp, log_sigma.expand(x_vp.shape[0]))

    return model


def run_diffusers(scheduler, model, latents, steps, seed=0):
    """diffusers' trajectory from `latents`, its initial sample (already scaled by init_noise_sigma)."""
    scheduler.set_timesteps(steps)
    sample, trajectory = latents, []
    extra = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(out, t, sample, **extra).prev_sample
        trajectory.append(sample)
    return trajectory


def run_ours(solver, steps, spacing, vp, seed=0):
    """Our trajectory (VE form) and initial sample; vp: start from LATENTS as a VP sample."""
    net, trajectory = FixedEps(), []
    # diffusers starts at the schedule's top (157 here); difftrain's default caps it at 80.
    sigmas = Sampler(solver, steps=steps, spacing=spacing, sigma_max=None).sigmas(SCHEDULE)
    x = LATENTS * (1 + sigmas[0] ** 2).sqrt() if vp else LATENTS * sigmas[0]
    solver(
        Denoiser(net, EpsObjective()),
        x,
        sigmas,
        generator=torch.Generator().manual_seed(seed),
        callback=lambda info: trajectory.append(info["x"]),
    )
    start = LATENTS if vp else x  # the same initial sample in diffusers' coordinates
    return trajectory, sigmas, net, start


COMMON = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)


def to_vp(trajectory, sigmas):
    return [x / torch.sqrt(1 + s**2) for x, s in zip(trajectory, sigmas[1:], strict=True)]


def assert_trajectories_match(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, i=i: f"step {i}: {m}")


def test_ddim_matches_diffusers():
    ours, sigmas, net, start = run_ours(sample_ddim, 10, "leading", vp=True)
    scheduler = diffusers.DDIMScheduler(
        **COMMON, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading"
    )
    theirs = run_diffusers(scheduler, diffusers_model(net, scheduler), start, 10)
    assert_trajectories_match(to_vp(ours, sigmas), theirs)


def test_euler_matches_diffusers():
    ours, _, net, start = run_ours(sample_euler, 10, "trailing", vp=False)
    scheduler = diffusers.EulerDiscreteScheduler(**COMMON, timestep_spacing="trailing")
    assert_trajectories_match(
        ours, run_diffusers(scheduler, diffusers_model(net, scheduler), start, 10)
    )


def test_euler_ancestral_matches_diffusers_with_the_same_noise():
    ours, _, net, start = run_ours(sample_euler_ancestral, 10, "trailing", vp=False, seed=5)
    scheduler = diffusers.EulerAncestralDiscreteScheduler(**COMMON, timestep_spacing="trailing")
    theirs = run_diffusers(scheduler, diffusers_model(net, scheduler), start, 10, seed=5)
    assert_trajectories_match(ours, theirs)


def test_heun_matches_diffusers():
    ours, _, net, start = run_ours(sample_heun, 10, "trailing", vp=False)
    scheduler = diffusers.HeunDiscreteScheduler(**COMMON, timestep_spacing="trailing")
    theirs = run_diffusers(scheduler, diffusers_model(net, scheduler), start, 10, seed=None)
    # diffusers steps once per evaluation; a Heun step completes on every second one (the last has one).
    assert_trajectories_match(ours, theirs[1::2] + theirs[-1:])


def test_dpmpp_2m_matches_diffusers():
    ours, sigmas, net, start = run_ours(sample_dpmpp_2m, 10, "trailing", vp=True)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **COMMON,
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
    )
    theirs = run_diffusers(scheduler, diffusers_model(net, scheduler), start, 10)
    assert_trajectories_match(to_vp(ours, sigmas), theirs)
