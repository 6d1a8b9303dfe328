"""Noise schedules against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from difftrain.diffusion.schedules import (
    CosineSchedule,
    EDMSchedule,
    LinearSchedule,
    ScaledLinearSchedule,
    SigmoidSchedule,
    karras_sigmas,
)


def test_cosine_alpha_bar_matches_nichol_dhariwal_eq17():
    T, s = 1000, 0.008
    schedule = CosineSchedule(T, s)
    t = (
        torch.arange(1, T + 1, dtype=torch.float64) / T
    )  # alphas_cumprod[i] is alpha_bar((i + 1) / T)
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    closed = f / math.cos(s / (1 + s) * math.pi / 2) ** 2
    unclipped = schedule.betas < 0.999
    unclipped[unclipped.logical_not().nonzero().min() :] = (
        False  # after the first clipped beta they differ
    )
    torch.testing.assert_close(
        schedule.alphas_cumprod[unclipped], closed[unclipped], rtol=1e-10, atol=1e-12
    )


def test_continuous_t_interpolates_the_discrete_levels():
    schedule = CosineSchedule()
    i = torch.tensor([0, 1, 500, 998, 999])
    t = i.double() / 999
    torch.testing.assert_close(schedule.alpha_bar(t), schedule.alphas_cumprod[i])
    sigma = schedule.sigma(torch.linspace(0, 1, 1001, dtype=torch.float64))
    assert (sigma.diff() > 0).all(), "noise level must increase with t"


def test_forward_process_marginals_match_closed_form():
    """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, through the VE form x0 + sigma eps."""
    schedule, x0 = CosineSchedule(), torch.tensor(0.7)
    torch.manual_seed(0)
    for t in (0.1, 0.5, 0.9):
        t = torch.tensor(t)
        sigma = schedule.sigma(t)
        x_ve = x0 + sigma * torch.randn(200_000)
        x_vp = x_ve / torch.sqrt(1 + sigma**2)
        ab = schedule.alpha_bar(t)
        assert x_vp.mean() == pytest.approx(float(ab.sqrt() * x0), abs=5e-3)
        assert x_vp.var() == pytest.approx(float(1 - ab), rel=1e-2, abs=1e-3)


@pytest.mark.parametrize(
    "spacing, expected",
    [  # the indices diffusers' DDIMScheduler picks for T=1000, 10 steps
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_timestep_spacing(spacing, expected):
    t = CosineSchedule().timesteps(10, spacing)
    assert (t * 999).round().long().tolist() == expected


def test_sampling_sigmas_decrease_to_zero():
    sigmas = CosineSchedule().sampling_sigmas(25)
    assert sigmas.shape == (26,) and sigmas[-1] == 0 and (sigmas.diff() < 0).all()


def test_bad_steps_and_spacing_fail_clearly():
    with pytest.raises(ValueError, match="steps"):
        CosineSchedule().sampling_sigmas(2000)
    with pytest.raises(ValueError, match="spacing"):
        CosineSchedule().sampling_sigmas(10, "uniform")


def test_linear_and_scaled_linear_betas():
    torch.testing.assert_close(
        LinearSchedule().betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    )
    expected = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(ScaledLinearSchedule().betas, expected)


def test_sigmoid_schedule_follows_jabri_et_al():
    start, end, tau = -3.0, 3.0, 1.0
    v = lambda x: 1 / (1 + math.exp(-x / tau))  # noqa: E731
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    expected = (v(end) - torch.sigmoid((t * (end - start) + start) / tau)) / (v(end) - v(start))
    i = (t * 1000).long() - 1  # alphas_cumprod[i] is alpha_bar((i + 1) / T)
    torch.testing.assert_close(SigmoidSchedule().alphas_cumprod[i], expected, rtol=1e-6, atol=1e-9)


def test_edm_schedule_spans_its_sigma_range_with_rho_spacing():
    schedule = EDMSchedule(0.002, 80.0, 7.0)
    sigmas = schedule.sampling_sigmas(18, "linspace")
    torch.testing.assert_close(sigmas[[0, -2, -1]], torch.tensor([80.0, 0.002, 0.0]))
    torch.testing.assert_close(sigmas[:-1], karras_sigmas(0.002, 80.0, 18, 7.0).float())


def test_karras_spacing_uses_the_schedules_sigma_range():
    schedule = LinearSchedule()
    sigmas = schedule.sampling_sigmas(10, "karras", rho=7.0)
    lo, hi = schedule.sigma(torch.tensor([0.0, 1.0])).tolist()
    torch.testing.assert_close(sigmas[:-1], karras_sigmas(lo, hi, 10, 7.0).float())


def test_resolution_shift_moves_log_snr_by_2_log_ratio():
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    for base, shifted in (
        (CosineSchedule(), CosineSchedule(base_resolution=32, resolution=128)),
        (EDMSchedule(), EDMSchedule(base_resolution=32, resolution=128)),
    ):
        torch.testing.assert_close(
            shifted.log_snr(t), base.log_snr(t) + 2 * math.log(32 / 128), rtol=1e-5, atol=1e-5
        )


def test_continuous_schedules_accept_every_spacing():
    schedule = EDMSchedule()
    assert schedule.timesteps(4, "leading").tolist() == [0.75, 0.5, 0.25, 0.0]
    assert schedule.timesteps(4, "trailing").tolist() == [1.0, 0.75, 0.5, 0.25]
