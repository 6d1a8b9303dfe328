"""Clips: Moving-MNIST-style moving digits (Srivastava et al. 2015), and the data module of clips.

A clip is (C, T, H, W) in [0, 1]; a clip dataset holds them as uint8 (N, C, T, H, W) in memory
(`images`, as the image datasets do, so device batches, exact resume and DDP sharding serve
them alike) with their labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from difftrain.data.captioned import load_glyphs
from difftrain.data.datamodule import ImageDataModule
from difftrain.data.datasets import SPLITS, _resize_uint8
from difftrain.data.media import Videos

DEFAULT_CLIPS = {"train": 20_000, "val": 1_000}  # validation runs on every val clip: keep it small


class TensorClips(Dataset):
    """uint8 clips (N, C, T, H, W), integer labels (N,) and each digit's top-left corner per
    frame (N, T, digits, 2) as (x, y), served as (clip in [0, 1], label)."""

    def __init__(self, clips: Tensor, labels: Tensor, positions: Tensor | None = None):
        self.images, self.labels, self.positions = clips, labels.long(), positions

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i].float() / 255, int(self.labels[i])


def bounce(start: Tensor, velocity: Tensor, frames: int, room: float) -> Tensor:
    """Positions (N, T, 2) of points starting at `start` (N, 2) with `velocity` (N, 2) per frame
    in [0, room], reflected off both ends: a triangle wave of period 2 room."""
    t = torch.arange(frames, dtype=torch.float64)[None, :, None]  # (1, T, 1)
    path = (start[:, None] + velocity[:, None] * t) % (2 * room)  # (N, T, 2)
    return torch.where(path > room, 2 * room - path, path)


def moving_digits(
    split: str,
    root: str | None = None,
    frames: int = 8,
    image_size: int = 32,
    num_digits: int = 1,
    speed: Sequence[float] = (1.0, 3.0),
    glyph_size: int | None = None,
    clips: Mapping[str, int | None] | None = None,
    seed: int = 0,
) -> TensorClips:
    """Clips of `num_digits` MNIST glyphs (scikit-learn's digits where MNIST is not under `root`)
    moving in straight lines on black and bouncing off the edges, generated deterministically
    from (seed, split): each clip draws its glyphs, start positions, directions (uniform) and
    speeds (uniform in `speed`, pixels per frame). Glyphs are resized to `glyph_size` (default
    half the frame, 28 px on frames of 64 and more as in Moving MNIST); overlapping digits take
    the brighter pixel. The label is the first digit's class. `clips` caps each split's number
    of clips ({"train": 20000, "val": 1000} by default; None: one per glyph).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    low, high = speed
    if not 0 <= low <= high:
        raise ValueError(
            f"data.dataset.speed must be [low, high] with 0 <= low <= high, got {speed}"
        )
    glyph_size = glyph_size or (28 if image_size >= 64 else image_size // 2)
    if not 0 < glyph_size <= image_size:
        raise ValueError(f"glyph_size {glyph_size} must be in (0, image_size={image_size}]")
    glyphs, classes = load_glyphs(split, root)
    glyphs = _resize_uint8(glyphs, glyph_size)[:, 0]  # (G, g, g)
    cap = {**DEFAULT_CLIPS, **(clips or {})}[split]
    n = len(glyphs) if cap is None else min(cap, len(glyphs))
    generator = torch.Generator().manual_seed(seed * 2 + SPLITS.index(split))
    room = image_size - glyph_size
    canvas = torch.zeros(n, frames, image_size, image_size, dtype=torch.uint8)
    labels, corners = None, []
    offsets = torch.arange(glyph_size)
    for k in range(num_digits):
        # The first digit of clip i is glyph i (every glyph once); the others are drawn.
        pick = torch.arange(n) if k == 0 else torch.randint(len(glyphs), (n,), generator=generator)
        start = torch.rand(n, 2, generator=generator, dtype=torch.float64) * room
        angle = torch.rand(n, generator=generator, dtype=torch.float64) * 2 * math.pi
        pace = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        velocity = pace[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)  # (N, 2) x, y
        corner = bounce(start, velocity, frames, room).round().long()  # (N, T, 2)
        rows = (corner[..., 1, None] + offsets)[..., :, None]  # (N, T, g, 1)
        cols = (corner[..., 0, None] + offsets)[..., None, :]  # (N, T, 1, g)
        clip = torch.arange(n)[:, None, None, None]
        frame = torch.arange(frames)[None, :, None, None]
        placed = glyphs[pick][:, None]  # (N, 1, g, g): the same glyph in every frame
        canvas[clip, frame, rows, cols] = torch.maximum(canvas[clip, frame, rows, cols], placed)
        labels = classes[pick] if k == 0 else labels
        corners.append(corner)
    clips = canvas[:, None]  # (N, T, H, W) -> (N, 1, T, H, W)
    return TensorClips(clips, labels, torch.stack(corners, dim=2))


class VideoDataModule(ImageDataModule):
    """Batches of (clips (B, C, T, S, S) in `value_range`, labels (B,)): `ImageDataModule` for a
    dataset of clips (`dataset(split)` yields (clip (C, T, S, S) in [0, 1], label)). In-memory
    clip datasets are served from the training device; a resolution curriculum resizes every
    frame (`data.media`). Clips are not augmented and have no latent space yet."""

    def __init__(self, frames: int, **options):
        if options.get("hflip") or options.get("translate"):
            raise ValueError(
                "data.hflip and data.translate augment images, not clips: set data.hflip=false "
                "data.translate=0"
            )
        if options.get("autoencoder") is not None:
            raise ValueError("clips have no latent space yet: drop autoencoder= for video data")
        if frames < 2:
            raise ValueError(f"data.frames must be >= 2 for clips, got {frames}")
        self.frames = frames
        if options.get("media") is None:
            options["media"] = Videos(options.get("value_range", (-1.0, 1.0)))
        super().__init__(**options)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.channels, self.frames, self.image_size, self.image_size)
