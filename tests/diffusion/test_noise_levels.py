"""Training noise-level distributions."""

from __future__ import annotations

import pytest
import torch

from difftrain.diffusion.noise_levels import LogitNormal, LogNormal, LossSecondMoment, UniformT
from difftrain.diffusion.schedules import CosineSchedule, EDMSchedule

torch.manual_seed(0)


def test_uniform_t_follows_the_schedule():
    schedule = CosineSchedule()
    sigma, weight = UniformT()(50_000, schedule, torch.device("cpu"))
    median = schedule.sigma(torch.tensor(0.5))
    assert (sigma < median).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(weight, torch.ones_like(weight))


def test_log_normal_has_edm_moments():
    sigma, _ = LogNormal(-1.2, 1.2)(50_000, EDMSchedule(), torch.device("cpu"))
    assert sigma.log().mean().item() == pytest.approx(-1.2, abs=0.02)
    assert sigma.log().std().item() == pytest.approx(1.2, abs=0.02)


def test_logit_normal_puts_t_around_the_middle():
    schedule = EDMSchedule()
    sigma, _ = LogitNormal(0.0, 1.0)(50_000, schedule, torch.device("cpu"))
    median = schedule.sigma(torch.tensor(0.5))
    assert (sigma < median).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_importance_sampling_prefers_high_loss_bins_and_stays_unbiased():
    sampler, schedule = (
        LossSecondMoment(num_bins=10, history=5, uniform_prob=0.01),
        CosineSchedule(),
    )
    true_loss = torch.linspace(0.1, 2.0, 10)  # a loss that grows with t
    while (sampler.counts < 5).any():  # warm-up is uniform
        sigma, weight = sampler(64, schedule, torch.device("cpu"))
        assert torch.equal(weight, torch.ones_like(weight))
        sampler.update(true_loss[sampler._last_bins])
    p = sampler.probabilities()
    assert p.argmax() == 9 and p[9] > 5 * p[0]
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    # E_p[loss * weight] equals the uniform mean of the loss.
    estimate = []
    for _ in range(200):
        _, weight = sampler(256, schedule, torch.device("cpu"))
        estimate.append((true_loss[sampler._last_bins] * weight).mean())
        sampler._last_bins = None
    assert torch.stack(estimate).mean().item() == pytest.approx(true_loss.mean().item(), rel=0.02)


def test_importance_state_lives_in_the_state_dict():
    state = LossSecondMoment(num_bins=4, history=2).state_dict()
    assert set(state) == {"losses", "counts"} and state["losses"].shape == (4, 2)
