"""Media objects: uint8 conversion, the stored layout and previews of images, clips and points."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from difftrain.data.media import Images, Points, Videos, media_of


def test_uint8_is_the_exact_inverse_of_normalize_for_images_and_clips():
    for media, shape in ((Images((-1, 1)), (3, 2, 5, 5)), (Videos((0, 1)), (3, 2, 4, 5, 5))):
        u8 = torch.randint(0, 256, shape, dtype=torch.uint8)
        x = media.normalize(u8.float() / 255)
        assert torch.equal(media.to_uint8(x), u8)  # channels first, no permutes
        stored = media.stored(x)
        assert stored.shape == (shape[0], *shape[2:], shape[1])  # channels last
        media.check_stored(stored)
        assert torch.equal(media.from_stored(stored), u8)


def test_frames_and_resizing_of_clips():
    clips = torch.rand(2, 3, 4, 8, 8)
    videos = Videos()
    assert videos.resize(clips, 4).shape == (2, 3, 4, 4, 4)  # frames kept, each downsampled
    assert torch.allclose(videos.resize(clips, 4)[:, :, 1], Images().resize(clips[:, :, 1], 4))
    u8 = (clips * 255).to(torch.uint8)
    assert torch.equal(videos.frames(u8)[5], u8[1, :, 1])  # clip 1, frame 1
    assert videos.shape_at((3, 4, 8, 8), 4) == (3, 4, 4, 4)
    with pytest.raises(ValueError, match=r"uint8 videos \(N, T, H, W, C\)"):
        videos.check_stored(u8[:, :, 0])  # images, not clips


def test_a_clip_preview_is_an_animated_grid_and_a_strip_of_frames(tmp_path):
    videos = Videos(fps=5)
    stored = torch.randint(0, 256, (6, 3, 8, 8, 1), dtype=torch.uint8)  # 6 clips of 3 frames
    gif = videos.preview(stored, tmp_path / "step.png")
    assert gif == tmp_path / "step.gif"
    with Image.open(gif) as animation:
        assert animation.n_frames == 3 and animation.info["duration"] == 200
        assert animation.size == (3 * 10 + 2, 2 * 10 + 2)  # 3 x 2 clips, 2 px apart
    with Image.open(tmp_path / "step.png") as strip:
        assert strip.size == (3 * 10 + 2, 6 * 10 + 2)  # a row of 3 frames per clip


def test_points_and_the_media_of_configs_saved_before_there_was_one(tmp_path):
    points = Points()
    assert points.preview(torch.randn(50, 2), tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"float points \(N, D\)"):
        points.check_stored(torch.zeros(4, 2, dtype=torch.uint8))
    old = OmegaConf.create({"_target_": "difftrain.data.datamodule.ImageDataModule",
                            "value_range": [0.0, 1.0]})  # fmt: skip
    assert isinstance(media_of(old), Images) and media_of(old).value_range == (0.0, 1.0)
    toy = OmegaConf.create({"_target_": "difftrain.data.toy2d.Toy2DDataModule"})
    assert isinstance(media_of(toy), Points)
