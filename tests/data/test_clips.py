"""Moving digits: deterministic clips of glyphs that move in straight lines and bounce."""

from __future__ import annotations

import pytest
import torch

from difftrain.data.clips import VideoDataModule, bounce, moving_digits


def reflected_walk(start: float, velocity: float, frames: int, room: float) -> list[float]:
    """The reference: step a point frame by frame, reversing it where it would leave [0, room]."""
    x, v, path = start, velocity, []
    for _ in range(frames):
        path.append(x)
        x += v
        while x < 0 or x > room:  # reflect off the wall it crossed
            x, v = (-x, -v) if x < 0 else (2 * room - x, -v)
    return path


def test_bounce_is_a_step_by_step_reflection():
    start = torch.tensor([[3.0, 15.5], [0.0, 7.25]], dtype=torch.float64)
    velocity = torch.tensor([[2.5, -3.0], [-1.75, 0.5]], dtype=torch.float64)
    path = bounce(start, velocity, frames=40, room=16.0)
    for n in range(2):
        for axis in range(2):
            expected = reflected_walk(start[n, axis].item(), velocity[n, axis].item(), 40, 16.0)
            assert torch.allclose(path[n, :, axis], torch.tensor(expected, dtype=torch.float64))


def test_moving_digits_are_deterministic_glyphs_that_move_inside_the_frame(tmp_path):
    root = str(tmp_path / "no-mnist")  # scikit-learn's digits: no download
    clips = moving_digits("train", root, frames=6, image_size=24, speed=(2.0, 3.0))
    again = moving_digits("train", root, frames=6, image_size=24, speed=(2.0, 3.0))
    assert clips.images.shape == (1617, 1, 6, 24, 24) and clips.images.dtype == torch.uint8
    assert torch.equal(clips.images, again.images) and torch.equal(clips.labels, again.labels)
    val = moving_digits("val", root, frames=6, image_size=24)
    assert len(val) == 180 and not torch.equal(val.images[:10], clips.images[:10])
    # Each frame holds the same glyph (same ink), moved by 2 to 3 pixels per frame (or bounced).
    ink = clips.images.float().sum((1, 3, 4))  # (N, T)
    assert (ink - ink[:, :1]).abs().max() == 0
    corners = clips.positions[:, :, 0].double()  # (N, T, 2)
    step = (corners[:, 1:] - corners[:, :-1]).norm(dim=-1)
    assert step.max() <= 3 + 1.5 and step.median() >= 1.5  # rounding to pixels, bounces shorten
    assert corners.min() >= 0 and corners.max() <= 24 - 12
    x, label = clips[0]
    assert x.shape == (1, 6, 24, 24) and x.min() >= 0 and x.max() <= 1 and label == clips.labels[0]


def test_two_digits_and_the_split_caps(tmp_path):
    root = str(tmp_path / "no-mnist")
    clips = moving_digits("train", root, frames=4, num_digits=2, clips={"train": 50})
    assert clips.images.shape == (50, 1, 4, 32, 32) and clips.positions.shape == (50, 4, 2, 2)
    one = moving_digits("train", root, frames=4, clips={"train": 50})
    assert clips.images.float().sum() > one.images.float().sum() * 1.5
    with pytest.raises(ValueError, match="speed must be"):
        moving_digits("train", root, speed=(3.0, 1.0))


def test_the_clip_data_module_serves_clips_and_refuses_image_augmentation(tmp_path):
    def dataset(split):
        return moving_digits(split, str(tmp_path / "none"), frames=4, image_size=16)

    options = dict(dataset=dataset, image_size=16, channels=1, num_classes=10, frames=4)
    dm = VideoDataModule(**options, sample_shape=(1, 4, 16, 16), batch_size=8)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (180, 1, 4, 16, 16) and x.min() >= -1 and x.max() <= 1 and y.shape == (180,)
    assert dm.sample_shape == (1, 4, 16, 16) and dm.media.key == "videos"
    assert torch.equal(dm.to_uint8(x[:2]), dataset("val").images[:2])  # the exact inverse
    with pytest.raises(ValueError, match="augment images, not clips"):
        VideoDataModule(**options, hflip=True)
    wrong = VideoDataModule(**options, sample_shape=(1, 16, 16))
    with pytest.raises(ValueError, match=r"set data.sample_shape=\[1,4,16,16\]"):
        wrong.setup("fit")
