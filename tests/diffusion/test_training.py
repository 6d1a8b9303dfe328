"""Every objective trains with every schedule family: finite, decreasing loss on tiny data."""

from __future__ import annotations

import pytest
import torch

from difftrain.data.datasets import digits
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.loss import DenoisingLoss, raw_error
from difftrain.diffusion.noise_levels import LogNormal, UniformT
from difftrain.diffusion.objectives import (
    EDMObjective,
    EpsObjective,
    FlowObjective,
    VObjective,
    X0Objective,
    check_compatible,
)
from difftrain.diffusion.schedules import CosineSchedule, EDMSchedule, LinearSchedule
from difftrain.diffusion.weighting import Uniform
from difftrain.nets.unet import UNet

OBJECTIVES = {
    "eps": EpsObjective,
    "x0": X0Objective,
    "v": VObjective,
    "edm": EDMObjective,
    "flow": FlowObjective,
}
SCHEDULES = {"cosine": CosineSchedule, "edm": EDMSchedule, "linear": LinearSchedule}


@pytest.fixture(scope="module")
def images():
    return digits("train", image_size=8).images[:256].float() / 255 * 2 - 1


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("objective_name", OBJECTIVES)
def test_loss_is_finite_and_decreases(images, objective_name, schedule_name):
    torch.manual_seed(0)
    schedule, objective = SCHEDULES[schedule_name](), OBJECTIVES[objective_name]()
    net = UNet((1, 8, 8), channels=16, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4)
    denoiser = Denoiser(net, objective)
    noise_levels = LogNormal() if schedule_name == "edm" else UniformT()
    loss_fn = DenoisingLoss(noise_levels, Uniform())
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)

    # A fixed evaluation set: the same noise levels and noise before and after training.
    gen = torch.Generator().manual_seed(1)
    eval_sigma, _ = noise_levels(256, schedule, torch.device("cpu"))
    eval_noise = torch.randn(images.shape, generator=gen)

    def evaluate():
        with torch.no_grad():
            return raw_error(denoiser, images, eval_sigma, eval_noise)[0].mean().item()

    before = evaluate()
    for step in range(40):
        batch = images[torch.randint(0, len(images), (64,), generator=gen)]
        losses, sigma = loss_fn(denoiser, schedule, batch)
        assert losses.shape == (64,) and torch.isfinite(losses).all(), f"step {step}"
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
    after = evaluate()
    assert after < 0.8 * before, f"{objective_name} x {schedule_name}: {before:.4f} -> {after:.4f}"


def test_zero_terminal_snr_with_eps_fails_naming_the_fix():
    with pytest.raises(
        ValueError, match=r"zero_terminal_snr=true with objective=eps.*Use objective=v"
    ):
        check_compatible(CosineSchedule(zero_terminal_snr=True), EpsObjective())
    check_compatible(CosineSchedule(zero_terminal_snr=True), VObjective())  # the fix works


def test_every_objective_recovers_x0_from_its_exact_target():
    torch.manual_seed(0)
    x0, noise, sigma = (
        torch.randn(5, 1, 4, 4),
        torch.randn(5, 1, 4, 4),
        torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0]),
    )
    x = x0 + sigma.view(-1, 1, 1, 1) * noise
    for objective in (cls() for cls in OBJECTIVES.values()):
        target = objective.target(x0, x, sigma)
        c_skip, c_out, _, _ = (s.view(-1, 1, 1, 1) for s in objective.scalings(sigma))
        torch.testing.assert_close(c_skip * x + c_out * target, x0, rtol=1e-4, atol=1e-4)
    v = VObjective().target(x0, x, sigma)  # v = alpha eps - sigma_t x0 (Salimans & Ho 2022)
    alpha, sigma_t = (
        (1 / (1 + sigma**2).sqrt()).view(-1, 1, 1, 1),
        (sigma / (1 + sigma**2).sqrt()).view(-1, 1, 1, 1),
    )
    torch.testing.assert_close(v, alpha * noise - sigma_t * x0, rtol=1e-4, atol=1e-4)
    flow = FlowObjective().target(x0, x, sigma)  # velocity eps - x0
    torch.testing.assert_close(flow, noise - x0, rtol=1e-4, atol=1e-3)
