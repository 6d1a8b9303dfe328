"""Noise models: noise shared in part by a clip's frames, in training and in every sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from difftrain.cli.train import train
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.generate import Diffusion
from difftrain.diffusion.loss import DenoisingLoss
from difftrain.diffusion.noise import MixedFrameNoise
from difftrain.diffusion.noise_levels import LogNormal
from difftrain.diffusion.objectives import EDMObjective
from difftrain.diffusion.samplers import Sampler, sample_euler_ancestral, sample_heun
from difftrain.diffusion.schedules import EDMSchedule
from difftrain.diffusion.weighting import Uniform
from difftrain.runs.pretrained import load_trained
from tests.cli.test_video import CLIPS
from tests.conftest import compose_cfg


def frame_correlation(n: torch.Tensor) -> float:
    """The correlation of frames 0 and 1 of noise (B, C, T, H, W), over every other axis."""
    return torch.corrcoef(torch.stack([n[:, :, 0].flatten(), n[:, :, 1].flatten()]))[0, 1].item()


def test_mixed_frame_noise_is_standard_normal_per_frame_and_correlated_across_frames():
    z = torch.randn(2000, 1, 6, 4, 4, generator=torch.Generator().manual_seed(0))
    for rho in (0.0, 0.5, 0.9):
        n = MixedFrameNoise(rho)(z)
        assert n.std().item() == pytest.approx(1.0, abs=0.02)
        assert frame_correlation(n) == pytest.approx(rho, abs=0.03)
        positions = torch.corrcoef(torch.stack([n[..., 0, 0].flatten(), n[..., 1, 1].flatten()]))
        assert abs(positions[0, 1].item()) < 0.03  # only the frames share noise
    torch.testing.assert_close(MixedFrameNoise(0.0)(z), z)
    with pytest.raises(ValueError, match=r"correlation must be in \[0, 1\)"):
        MixedFrameNoise(1.0)
    with pytest.raises(ValueError, match="drop model.noise for images"):
        MixedFrameNoise(0.5)(torch.randn(2, 3, 8, 8))


class Recorder(nn.Module):
    """A net that outputs zeros and keeps the inputs it was given."""

    sample_shape = (1, 4, 3, 3)
    num_classes = 0

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x, c_noise, **cond):
        self.seen.append(x.detach())
        return x * self.weight


def test_training_draws_the_denoisers_noise():
    net = Recorder()
    denoiser = Denoiser(net, EDMObjective(), MixedFrameNoise(0.9))
    loss = DenoisingLoss(LogNormal(), Uniform())
    x0 = torch.zeros(512, *net.sample_shape)  # the input is the scaled noise alone
    loss(denoiser, EDMSchedule(), x0, generator=torch.Generator().manual_seed(0))
    assert frame_correlation(net.seen[0]) == pytest.approx(0.9, abs=0.03)


@pytest.mark.parametrize("solver", [sample_heun, sample_euler_ancestral])
def test_sampling_starts_from_and_adds_the_denoisers_noise(solver):
    """With noise shared by the frames, a net that cannot tell them apart draws frames nearly
    alike, from the start (Heun) and in every fresh draw (ancestral); with independent noise the
    frames differ."""

    def spread(noise):
        denoiser = Denoiser(Recorder(), EDMObjective(), noise)
        sampler = Sampler(solver, steps=8, spacing="karras")
        x, _ = Diffusion(denoiser, EDMSchedule(), sampler).generate(64)
        return (x - x.mean(2, keepdim=True)).std().item() / x.std().item()

    assert spread(MixedFrameNoise(0.99)) < 0.15 < 0.8 < spread(None)


def test_a_clip_run_with_shared_noise_resumes_exactly_and_samples_with_it(tmp_path):
    shared = [*CLIPS, "noise=mixed_frames", "model.noise.correlation=0.9"]
    straight = compose_cfg(tmp_path / "straight", *shared)
    train(straight)
    first = compose_cfg(tmp_path / "a", *shared, "trainer.max_steps=2")
    train(first)
    resumed = compose_cfg(
        tmp_path / "b", *shared, f"ckpt_path={first.paths.output_dir}/checkpoints/last.ckpt"
    )
    train(resumed)
    a, b = (torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
                       weights_only=False)["state_dict"] for cfg in (straight, resumed))  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = load_trained(Path(straight.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert model.diffusion.denoiser.noise.correlation == 0.9
    clips, _ = model.sample(2, labels=[1, 2])
    assert clips.shape == (2, 4, 16, 16, 1)


def test_shared_frame_noise_is_refused_for_images(tmp_path):
    cfg = compose_cfg(tmp_path, "noise=mixed_frames", "trainer.max_steps=1")
    with pytest.raises(Exception, match="drop model.noise for images"):
        train(cfg)
