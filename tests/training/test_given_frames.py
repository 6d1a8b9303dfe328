"""Given frames: what training gives a clip, what the loss leaves out, what the UNet reads."""

from __future__ import annotations

import pytest
import torch

from difftrain.diffusion.generate import given_values, keep_given
from difftrain.diffusion.loss import example_mean
from difftrain.evaluation.video import copy_last_given, prediction_scores
from difftrain.nets.unet import UNet
from difftrain.streams import Share
from difftrain.training.conditioners import ClassLabels, GivenFrames


def test_training_gives_none_the_first_k_or_the_first_and_last_frames_alike_on_any_world():
    x0, labels = torch.randn(64, 1, 6, 4, 4), torch.randint(10, (64,))
    given = GivenFrames(ClassLabels(10))
    cond = given(x0, labels, torch.Generator().manual_seed(0))
    mask = cond["given_mask"].bool()[:, 0, :, 0, 0]  # (B, 1, T, 1, 1) -> (B, T)
    assert torch.equal(cond["class_labels"], labels)
    first_last = torch.tensor([True, False, False, False, False, True])
    for row in mask:
        k = int(row.sum())
        prefix = k < 6 and row[:k].all() and not row[k:].any()
        assert prefix or torch.equal(row, first_last)  # none is the prefix of length 0
    none, first = (mask.sum(1) == 0).sum(), (mask[:, 0] & ~mask[:, -1]).sum()
    assert none > 5 and first > 5 and not mask.all(1).any()  # each mode drawn; never every frame
    assert torch.equal(cond["given"], x0 * mask[:, None, :, None, None])
    halves = [given(x0[r * 32 : (r + 1) * 32], labels[r * 32 : (r + 1) * 32],
                    torch.Generator().manual_seed(0), Share(r, 2))["given_mask"] for r in (0, 1)]  # fmt: skip
    assert torch.equal(torch.cat(halves), cond["given_mask"])  # 2 processes: the same draws
    assert "given_mask" not in given(x0, labels)  # outside training: none given
    with pytest.raises(ValueError, match="given_modes"):
        GivenFrames(ClassLabels(10), ["first", "middle"])
    only = GivenFrames(ClassLabels(10), ["first_last"])(
        x0, labels, torch.Generator().manual_seed(1)
    )
    assert (only["given_mask"].bool()[:, 0, :, 0, 0] == first_last).all()


def test_the_loss_leaves_the_given_frames_out():
    error = torch.rand(3, 2, 4, 5, 5)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=torch.float32)
    spoiled = error.clone()
    spoiled[mask.bool()[:, None, :, None, None].expand_as(error)] = 1e6
    means = example_mean(spoiled, {"given_mask": mask[:, None, :, None, None]})
    for i in range(3):
        kept = error[i][:, ~mask[i].bool()]
        assert torch.allclose(means[i], kept.mean())
    assert torch.allclose(example_mean(error), error.flatten(1).mean(1))


def test_the_unet_reads_given_frames_starting_at_zero():
    torch.manual_seed(0)
    net = UNet([1, 4, 8, 8], channels=8, channel_mult=[1, 2], num_res_blocks=1, norm_groups=4,
               head_channels=8, given_frames=True)  # fmt: skip
    x, c = torch.randn(2, 1, 4, 8, 8), torch.tensor([0.1, -0.3])
    clips, mask = torch.randn(2, 1, 4, 8, 8), torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1]])
    frames = lambda m: m[:, None, :, None, None]  # noqa: E731  (B, T) -> (B, 1, T, 1, 1)
    cond = given_values(clips, frames(mask))
    torch.nn.init.normal_(net.conv_out.weight)  # zero at first: outputs that can differ
    assert torch.equal(net(x, c, **cond), net(x, c))  # zero at first: inflation stays exact
    for p in net.given_in.parameters():  # as trained: every parameter it has (no bias)
        torch.nn.init.normal_(p)
    out = net(x, c, **cond)
    assert not torch.allclose(out, net(x, c))
    none = given_values(clips, frames(torch.zeros_like(mask)))  # what training gives for "none"
    assert torch.equal(net(x, c, **none), net(x, c))  # is what sampling from nothing passes
    other = given_values(clips + 1, frames(mask))
    assert not torch.allclose(out, net(x, c, **other))  # it reads the frames, not only the mask
    kept = keep_given(torch.zeros_like(x), cond)
    assert torch.equal(kept[:, :, :2][0], clips[0, :, :2]) and (kept[1, :, 1:3] == 0).all()
    with pytest.raises(ValueError, match="net.given_frames=true"):
        UNet([1, 4, 8, 8], channels=8, channel_mult=[1, 2], norm_groups=4)(x, c, **cond)
    with pytest.raises(ValueError, match="needs clips"):
        UNet([1, 8, 8], channels=8, channel_mult=[1, 2], norm_groups=4, given_frames=True)


def test_prediction_scores_and_the_copy_last_frame_baseline():
    truth = torch.randint(0, 256, (3, 1, 5, 16, 16), dtype=torch.uint8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 1], [0, 0, 1, 0, 0]], dtype=torch.bool)
    copied = copy_last_given(truth, mask)
    assert torch.equal(copied[0, :, 2:], truth[0, :, 1:2].expand(-1, 3, -1, -1))
    assert torch.equal(copied[1, :, 1:4], truth[1, :, :1].expand(-1, 3, -1, -1))
    assert torch.equal(copied[2, :, :2], truth[2, :, 2:3].expand(-1, 2, -1, -1))  # none before
    perfect = prediction_scores(truth, truth, mask)
    assert perfect["ssim"] > 0.999 and perfect["mse"] == 0 and perfect["psnr"] == 100
    assert perfect["copy_last_mse"] > 0.05  # random frames: copying is poor
    noisy = (truth.float() + 20 * torch.randn(truth.shape)).clamp(0, 255).to(torch.uint8)
    scores = prediction_scores(noisy, truth, mask)
    assert scores["copy_last_ssim"] < scores["ssim"] < 1 and 20 < scores["psnr"] < 30
    with pytest.raises(ValueError, match="every frame is given"):
        prediction_scores(truth, truth, torch.ones_like(mask))
