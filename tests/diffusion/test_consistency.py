"""Consistency models: the boundary condition, ECT's gap and loss, and multistep sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difftrain.diffusion.consistency import (
    ConsistencyDistillationLoss,
    ConsistencyObjective,
    ConsistencyTuningLoss,
    ect_gap,
    heun_step,
    sample_consistency,
)
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.noise import independent
from difftrain.diffusion.objectives import EDMObjective, EpsObjective, VObjective, expand_like
from difftrain.diffusion.samplers import Sampler
from difftrain.diffusion.schedules import EDMSchedule


class DropoutNet(nn.Module):
    """A small net with dropout, so that the two branches must share a mask to agree."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Dropout(0.5), nn.Linear(32, 2))

    def forward(self, x, c_noise, **cond):
        return self.body(torch.cat([x, c_noise.expand(len(x))[:, None]], dim=1))


@pytest.mark.parametrize("base", [EDMObjective(), EpsObjective(), VObjective()])
def test_the_boundary_condition_holds_for_any_objective(base):
    torch.manual_seed(0)
    net = DropoutNet().eval()
    f = Denoiser(net, ConsistencyObjective(base, sigma_min=0.002))
    d = Denoiser(net, base)
    x = torch.randn(16, 2)
    torch.testing.assert_close(f(x, torch.tensor(0.002)), x)  # f(x, sigma_min) = x
    for sigma in (0.8, 80.0):  # well above the boundary: the teacher's denoiser, nearly
        level = torch.tensor(sigma)
        gap = (f(x, level) - d(x, level)).abs().max() / (d(x, level) - x).abs().max()
        assert gap <= 0.002 / sigma + 1e-6
    with pytest.raises(ValueError, match="sigma_min must be > 0"):
        ConsistencyObjective(base, sigma_min=0.0)


def test_the_gap_shrinks_by_stage_and_starts_as_denoising():
    t = torch.tensor([0.01, 0.5, 1.0, 5.0, 80.0])
    first, last = ect_gap(t, 0), ect_gap(t, 7)
    assert torch.equal(first[:3], torch.zeros(3))  # stage 0: r = 0 below t of about 2
    assert ((t - last) / t < 0.03).all() and (last < t).all()  # stage 7: near neighbours
    assert all((ect_gap(t, s + 1) >= ect_gap(t, s)).all() for s in range(7))


def test_the_loss_is_zero_where_r_is_t_and_the_target_is_x0_below_the_boundary():
    torch.manual_seed(0)
    f = Denoiser(DropoutNet().train(), ConsistencyObjective(EDMObjective(), 0.002))
    loss = ConsistencyTuningLoss(total_steps=100)
    x0, noise = torch.randn(8, 2), torch.randn(8, 2)
    t = torch.linspace(0.01, 10, 8)
    x_t = x0 + t[:, None] * noise
    zero = loss.distance(f, x0, x_t, t, x_t, t)  # dropout on: only a shared mask makes this 0
    assert torch.equal(zero, torch.zeros(8))
    below = loss.distance(f, x0, x_t, t, x0, torch.zeros(8))  # r = 0: the target is x0 itself
    assert below.gt(0).all()
    losses, levels = loss(f, EDMSchedule(), x0, generator=torch.Generator().manual_seed(0))
    assert losses.shape == (8,) and torch.isfinite(losses).all() and (levels <= 80).all()
    losses.mean().backward()
    assert f.net.body[0].weight.grad.abs().sum() > 0  # the t branch trains
    loss.set_step(99)
    assert loss.stage == 7
    plain = Denoiser(DropoutNet(), EDMObjective())
    with pytest.raises(ValueError, match="model.boundary_sigma"):
        loss(plain, EDMSchedule(), x0)


def test_multistep_consistency_sampling_renoises_between_levels():
    target = torch.tensor([0.3, -0.7])
    calls = []

    def oracle(x, sigma, cond=None):  # a perfect consistency model of a point mass
        calls.append(float(sigma))
        return target.expand_as(x)

    x = 80 * torch.randn(4, 2)
    out = sample_consistency(oracle, x, torch.tensor([80.0, 2.0, 0.8, 0.0]))
    assert torch.equal(out, target.expand(4, 2)) and calls == pytest.approx([80.0, 2.0, 0.8])
    sampler = Sampler(sample_consistency, steps=2, spacing="karras", sigma_min=0.8)
    assert torch.allclose(sampler.sigmas(EDMSchedule()), torch.tensor([80.0, 0.8, 0.0]))
    chosen = Sampler(sample_consistency, levels=[80.0, 3.0, 0.5])
    assert torch.equal(chosen.sigmas(EDMSchedule()), torch.tensor([80.0, 3.0, 0.5, 0.0]))
    samples, nfe = chosen(oracle, torch.randn(4, 2), EDMSchedule())
    assert nfe == 3 and torch.equal(samples, target.expand(4, 2))
    with pytest.raises(ValueError, match="sampler.levels must be decreasing"):
        Sampler(sample_consistency, levels=[0.8, 80.0]).sigmas(EDMSchedule())


class Gaussian:
    """N(0, std^2) data, whose probability-flow ODE is known: the exact denoiser D, and the exact
    consistency function f(x, sigma) = x sqrt((std^2 + sigma_min^2) / (std^2 + sigma^2))."""

    objective = ConsistencyObjective(EDMObjective(), 0.002)
    noise = staticmethod(independent)  # as a Denoiser's: the noise is drawn as it is

    def __init__(self, std: float, consistent: bool):
        self.std, self.consistent = std, consistent

    def __call__(self, x, sigma, cond=None):
        var, level = self.std**2, expand_like(sigma.expand(len(x)), x) ** 2
        if self.consistent:
            return x * ((var + self.objective.sigma_min**2) / (var + level)).sqrt()
        return x * var / (var + level)  # the denoiser: the ODE's end only where sigma is small


def test_the_teacher_heun_step_follows_the_ode_and_cd_is_near_zero_at_the_true_f():
    torch.manual_seed(0)
    t = torch.tensor([80.0, 10.0, 1.0, 0.1])
    r = 0.7 * t
    x = torch.randn(4, 2) * (0.25 + t[:, None] ** 2).sqrt()
    exact = x * ((0.25 + r[:, None] ** 2) / (0.25 + t[:, None] ** 2)).sqrt()
    torch.testing.assert_close(heun_step(Gaussian(0.5, False), x, t, r), exact, rtol=5e-3, atol=0)
    loss = ConsistencyDistillationLoss(levels=18)
    loss.set_teacher(Denoiser(DropoutNet(), EDMObjective()))
    assert not any(p.requires_grad for p in loss.teacher.parameters())  # frozen
    loss.__dict__["teacher"] = Gaussian(0.5, consistent=False)  # the exact denoiser
    x0 = 0.5 * torch.randn(4096, 2)
    draws = torch.Generator().manual_seed(0)
    true_f, levels = loss(Gaussian(0.5, True), EDMSchedule(), x0, generator=draws)
    draws.manual_seed(0)
    wrong_f, _ = loss(Gaussian(0.5, False), EDMSchedule(), x0, generator=draws)
    assert true_f.mean() < wrong_f.mean() / 15, (true_f.mean(), wrong_f.mean())
    lowest = 0.002 ** (1 / 7) + (80 ** (1 / 7) - 0.002 ** (1 / 7)) / 17
    assert levels.min() >= lowest**7 * 0.999 and levels.max() <= 80  # adjacent Karras levels
    with pytest.raises(ValueError, match="model.init_from"):
        ConsistencyDistillationLoss()(Gaussian(0.5, True), EDMSchedule(), x0)


def test_cd_splits_the_teacher_step_and_follows_a_level_curriculum():
    t, r = torch.tensor([80.0, 20.0]), torch.tensor([2.0, 0.5])  # long links, as few levels make
    x = torch.randn(2, 2) * (0.25 + t[:, None] ** 2).sqrt()
    exact = x * ((0.25 + r[:, None] ** 2) / (0.25 + t[:, None] ** 2)).sqrt()
    one, four = (heun_step(Gaussian(0.5, False), x, t, r, steps=n) for n in (1, 4))
    assert (four - exact).abs().max() < (one - exact).abs().max() / 4
    loss = ConsistencyDistillationLoss(levels=[3, 18], teacher_steps=2, total_steps=100)
    loss.__dict__["teacher"] = Gaussian(0.5, consistent=False)
    x0 = 0.5 * torch.randn(512, 2)
    for step, count in [(0, 3), (49, 3), (50, 18), (100, 18)]:
        loss.set_step(step)
        _, levels = loss(Gaussian(0.5, True), EDMSchedule(), x0)
        if count == 3:  # 3 Karras levels: the middle one and sigma_max are the only t
            middle = ((0.002 ** (1 / 7) + 80 ** (1 / 7)) / 2) ** 7
            allowed = torch.tensor([middle, 80.0])
            assert torch.isclose(levels[:, None], allowed, rtol=1e-4).any(1).all(), levels.unique()
        else:
            assert len(levels.unique()) > 10
    for bad in ({"levels": []}, {"levels": [1, 18]}, {"teacher_steps": 0}):
        with pytest.raises(ValueError, match="loss: CD needs"):
            ConsistencyDistillationLoss(**bad)
