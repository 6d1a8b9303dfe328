"""Non-leaking augmentation and the curricula."""

from __future__ import annotations

import math

import pytest
import torch

from difftrain.cli.train import train
from difftrain.diffusion.noise_levels import Curriculum, LossSecondMoment, UniformT
from difftrain.diffusion.schedules import CosineSchedule
from difftrain.training.augment import LABEL_DIM, AugmentPipe
from tests.conftest import FAST


def test_p_zero_is_the_identity_with_zero_labels():
    x = torch.randn(4, 1, 8, 8)
    out, labels = AugmentPipe(p=0.0)(x)
    torch.testing.assert_close(out, x)
    assert labels.shape == (4, LABEL_DIM) and not labels.any()


def test_flips_and_rotations_are_exact_and_labelled():
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    out, labels = AugmentPipe(p=1.0, translate=0.0, scale_std=0.0)(x)
    for img, lab in zip(out, labels, strict=True):
        xflip, yflip, cos_m1, sin = lab[:4].tolist()
        k = round(math.atan2(sin, cos_m1 + 1) / (math.pi / 2)) % 4
        assert xflip == 1 and yflip == 1 and k in (1, 2, 3)
        assert sorted(img.flatten().round().tolist()) == list(
            range(64)
        )  # a permutation of the pixels


def test_augmented_training_feeds_the_labels_to_the_net_and_checks_its_size(make_cfg, monkeypatch):
    from difftrain.nets.unet import UNet

    seen, original = [], UNet.forward

    def spy(self, x, c_noise, **cond):
        seen.append((self.training, cond.get("augment_labels")))
        return original(self, x, c_noise, **cond)

    monkeypatch.setattr(UNet, "forward", spy)
    train(make_cfg(*FAST, "augment=edm", "model.augment.p=1.0", "logger=none"))
    training = [labels for is_training, labels in seen if is_training]
    assert training and all(
        labels is not None and labels.shape[1] == LABEL_DIM and labels.any() for labels in training
    )
    assert all(
        labels is None for is_training, labels in seen if not is_training
    )  # no leak into sampling
    with pytest.raises(Exception, match="net.augment_dim=7"):
        train(make_cfg(*FAST, "augment=edm", "net.augment_dim=0", "logger=none"))


def test_noise_level_curriculum_widens_to_the_full_range():
    schedule = CosineSchedule()
    curriculum = Curriculum(UniformT(), start_min=0.5, start_max=5.0, steps=100)
    full = schedule.sigma(torch.tensor([0.0, 1.0])).tolist()
    for step, (lo, hi) in [
        (0, (0.5, 5.0)),
        (50, (math.sqrt(0.5 * full[0]), math.sqrt(5.0 * full[1]))),
    ]:
        curriculum.set_step(step)
        assert curriculum.sigma_range(schedule) == pytest.approx((lo, hi), rel=1e-4)
        sigma, _ = curriculum(2000, schedule, torch.device("cpu"))
        assert sigma.shape == (2000,) and sigma.min() >= lo * 0.999 and sigma.max() <= hi * 1.001
    curriculum.set_step(100)
    sigma, _ = curriculum(20000, schedule, torch.device("cpu"))
    assert sigma.min() < 0.05 and sigma.max() > 100  # the base distribution, unrestricted
    with pytest.raises(ValueError, match="importance"):
        Curriculum(LossSecondMoment(), 0.5, 5.0, 100)


def test_resolution_curriculum_trains_at_the_scheduled_sizes(make_cfg, monkeypatch):
    from difftrain.diffusion.loss import DenoisingLoss

    cfg = make_cfg(*FAST, "callbacks=curriculum", "callbacks.resolution_curriculum.stages=[[0,0.5],[2,1.0]]",
                   "net.channel_mult=[1,2]", "logger=none")  # fmt: skip
    seen, original = [], DenoisingLoss.forward

    def spy(self, denoiser, schedule, x0, *args):
        if denoiser.training:
            seen.append(x0.shape[-1])
        return original(self, denoiser, schedule, x0, *args)

    monkeypatch.setattr(DenoisingLoss, "forward", spy)
    train(cfg)
    assert seen == [8, 8, 16, 16]
