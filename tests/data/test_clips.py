"""Moving digits: deterministic clips of glyphs that move in straight lines and bounce."""

from __future__ import annotations

import pytest
import torch

from difftrain.data.clips import (
    CLIP_CAPTIONS,
    DIRECTIONS,
    VideoDataModule,
    bounce,
    moving_digits,
    moving_digits_text,
)


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


def test_captioned_clips_say_the_digit_its_colour_and_where_it_sets_off(tmp_path):
    root = str(tmp_path / "no-mnist")
    held_out = ["digit=3,direction=up", "colour=blue,direction=left"]
    train = moving_digits_text("train", root, frames=4, clips={"train": 400}, held_out=held_out)
    val = moving_digits_text("val", root, frames=4, clips={"val": 400}, held_out=held_out)
    assert train.images.shape[1:] == (3, 4, 32, 32) and train.images.dtype == torch.uint8
    combos = CLIP_CAPTIONS.parse_held_out(held_out)
    assert not CLIP_CAPTIONS.is_held_out(train.attributes, combos).any() and len(train) < 400
    assert CLIP_CAPTIONS.is_held_out(val.attributes, combos).any()
    digit, colour, direction = train.attributes[0].tolist()
    assert train.captions[0] == f"a {CLIP_CAPTIONS.choices['colour'][colour]} " + (
        f"{CLIP_CAPTIONS.choices['digit'][digit]} moving {DIRECTIONS[direction]}"
    )
    x, tokens = train[0]
    assert x.shape == (3, 4, 32, 32) and tokens.shape == (12,)
    # The first step goes the way the caption says (sector k at k * 45 degrees, rows downwards).
    plain = moving_digits("train", root, frames=4, clips={"train": 400}, directions=8)
    step = (plain.positions[:, 1, 0] - plain.positions[:, 0, 0]).double()  # (N, 2) as (x, y)
    way = torch.stack([torch.cos(plain.directions * torch.pi / 4),
                       torch.sin(plain.directions * torch.pi / 4)], dim=1)  # fmt: skip
    free = step.norm(dim=1) > 1.5  # not bounced in the first step, not rounded to nothing
    assert ((step[free] * way[free]).sum(1) > 0.7 * step[free].norm(dim=1)).float().mean() > 0.95
    # The colour is the caption's: red clips have ink in the red channel only, mostly.
    red = train.attributes[:, 1] == CLIP_CAPTIONS.choices["colour"].index("red")
    ink = train.images[red].float().sum((2, 3, 4))  # (n, 3)
    assert (ink[:, 0] > 4 * ink[:, 2]).all()


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


def write_video(path, frames: int, codec: str = "mpeg4", size: int = 32) -> None:
    """A clip of a white square moving right 2 pixels a frame, encoded by PyAV."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            image[8:16, 2 * t : 2 * t + 8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_a_video_folder_decodes_its_clips_and_skips_the_unreadable_with_a_count(tmp_path, caplog):
    pytest.importorskip("av")
    from PIL import Image

    from difftrain.config import _video_folder_classes
    from difftrain.data.clips import read_clip, video_folder

    for name in ("a/1.mp4", "a/2.webm", "b/3.mp4", "b/4.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_video(tmp_path / name, 12, "libvpx" if name.endswith("webm") else "mpeg4")
    squares = [Image.new("RGB", (32, 32)) for _ in range(10)]
    for t, frame in enumerate(squares):
        frame.paste((255, 255, 255), (2 * t, 8, 2 * t + 8, 16))
    squares[0].save(
        tmp_path / "b" / "5.gif", save_all=True, append_images=squares[1:], duration=100
    )
    (tmp_path / "b" / "broken.mp4").write_bytes(b"not a video at all")
    write_video(tmp_path / "a" / "short.mp4", 3)
    options = dict(root=str(tmp_path), frames=4, stride=2, image_size=16, val_fraction=0.4)
    train, val = video_folder("train", **options), video_folder("val", **options)
    assert len(train) + len(val) == 5 and train.images.shape[1:] == (3, 4, 16, 16)
    assert "skipping 2 unreadable or short file(s) of 7" in caplog.text
    assert "broken.mp4" in caplog.text and "2 frames at stride 2, 4 needed" in caplog.text
    assert set(train.labels.tolist() + val.labels.tolist()) == {0, 1}
    assert _video_folder_classes(str(tmp_path)) == 2
    # Frames 0, 2, 4, 6 of the square moving 2 px a frame: 4 px apart, in order.
    clip = read_clip(tmp_path / "b" / "5.gif", frames=4, stride=2)
    assert clip.shape == (4, 32, 32, 3) and clip.dtype == torch.uint8
    columns = [(frame[..., 0].amax(0) > 100).nonzero().flatten().float().mean() for frame in clip]
    assert all(3.5 < b - a < 4.5 for a, b in zip(columns, columns[1:], strict=False))
    # ... and every clip in the folder (the same motion), at half size: 2 px apart.
    for clip in torch.cat([train.images, val.images])[:, 0].float():  # (T, 16, 16), red channel
        columns = [(frame.amax(0) > 100).nonzero().flatten().float().mean() for frame in clip]
        assert all(1.5 < b - a < 2.5 for a, b in zip(columns, columns[1:], strict=False))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        video_folder("train", str(tmp_path / "none"))


def test_moving_digit_frames_are_single_frames_for_the_image_stage(tmp_path):
    from difftrain.data.clips import moving_digit_frames

    root = str(tmp_path / "no-mnist")
    frames = moving_digit_frames("train", root, image_size=24)
    clips = moving_digits("train", root, frames=1, image_size=24, clips={"train": None})
    assert frames.images.shape == (1617, 1, 24, 24) and torch.equal(frames.labels, clips.labels)
    assert not torch.equal(frames.images, clips.images[:, :, 0])  # placed elsewhere
    ink = frames.images.float().sum((1, 2, 3))
    assert torch.allclose(ink, clips.images.float().sum((1, 2, 3, 4)))  # the same glyphs
    assert len(moving_digit_frames("val", root, images={"val": 50})) == 50


def test_the_image_stage_inflates_into_the_video_recipe(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    image = compose_cfg(tmp_path, "experiment=moving_digit_frames")
    net = instantiate(image.net)
    assert tuple(net.sample_shape) == (1, 32, 32)
    path = tmp_path / "frames.ckpt"
    torch.save(
        {"state_dict": {f"ema.module.net.{k}": v for k, v in net.state_dict().items()}}, path
    )
    video = compose_cfg(tmp_path, "experiment=moving_digits", f"model.init_from={path}",
                        "net.given_frames=true")  # fmt: skip
    module = instantiate(video.model)
    inflated = module.denoiser.net.state_dict()
    assert all(torch.equal(inflated[k], v) for k, v in net.state_dict().items())
