"""Clips: Moving-MNIST-style moving digits (Srivastava et al. 2015), and the data module of clips.

A clip is (C, T, H, W) in [0, 1]; a clip dataset holds them as uint8 (N, C, T, H, W) in memory
(`images`, as the image datasets do, so device batches, exact resume and DDP sharding serve
them alike) with their labels.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from difftrain.data.captioned import (
    DIGITS,
    FOREGROUNDS,
    CaptionedImages,
    CaptionSchema,
    load_glyphs,
)
from difftrain.data.datamodule import ImageDataModule
from difftrain.data.datasets import (
    SPLITS,
    TensorImages,
    _classes,
    _resize_uint8,
    _split_indices,
)
from difftrain.data.media import Videos
from difftrain.text.tokenizer import make_tokenizer

log = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".avi", ".mov", ".mkv", ".m4v")

DEFAULT_CLIPS = {"train": 20_000, "val": 1_000}  # validation runs on every val clip: keep it small
# The compass points, from "right" turning clockwise on screen (rows grow downwards): the
# `directions=8` of moving_digits, sector k at angle k * 45 degrees.
DIRECTIONS = (
    "right", "down and to the right", "down", "down and to the left",
    "left", "up and to the left", "up", "up and to the right",
)  # fmt: skip
CLIP_CAPTIONS = CaptionSchema(
    {"digit": DIGITS, "colour": tuple(FOREGROUNDS), "direction": DIRECTIONS},
    "a {colour} {digit} moving {direction}",
)


class TensorClips(Dataset):
    """uint8 clips (N, C, T, H, W), integer labels (N,) and each digit's top-left corner per
    frame (N, T, digits, 2) as (x, y), served as (clip in [0, 1], label)."""

    def __init__(
        self,
        clips: Tensor,
        labels: Tensor,
        positions: Tensor | None = None,
        directions: Tensor | None = None,
    ):
        self.images, self.labels, self.positions = clips, labels.long(), positions
        self.directions = directions  # (N,) of the first digit, where drawn from DIRECTIONS

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
    directions: int | None = None,
) -> TensorClips:
    """Clips of `num_digits` MNIST glyphs (scikit-learn's digits where MNIST is not under `root`)
    moving in straight lines on black and bouncing off the edges, generated deterministically
    from (seed, split): each clip draws its glyphs, start positions, directions (uniform) and
    speeds (uniform in `speed`, pixels per frame). Glyphs are resized to `glyph_size` (default
    half the frame, 28 px on frames of 64 and more as in Moving MNIST); overlapping digits take
    the brighter pixel. The label is the first digit's class. `clips` caps each split's number
    of clips ({"train": 20000, "val": 1000} by default; None: one per glyph). With `directions`
    (8: DIRECTIONS, the compass points) every digit starts along one of that many directions,
    evenly spaced from "right", and the dataset keeps the first digit's (`directions`).
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
    labels, corners, heading = None, [], None
    offsets = torch.arange(glyph_size)
    for k in range(num_digits):
        # The first digit of clip i is glyph i (every glyph once); the others are drawn.
        pick = torch.arange(n) if k == 0 else torch.randint(len(glyphs), (n,), generator=generator)
        start = torch.rand(n, 2, generator=generator, dtype=torch.float64) * room
        if directions is None:
            angle = torch.rand(n, generator=generator, dtype=torch.float64) * 2 * math.pi
        else:
            sector = torch.randint(directions, (n,), generator=generator)
            heading = sector if k == 0 else heading
            angle = sector.double() * 2 * math.pi / directions
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
    return TensorClips(clips, labels, torch.stack(corners, dim=2), heading)


def moving_digits_text(
    split: str,
    root: str | None = None,
    frames: int = 8,
    image_size: int = 32,
    speed: Sequence[float] = (1.0, 3.0),
    glyph_size: int | None = None,
    clips: Mapping[str, int | None] | None = None,
    held_out: Sequence[str] = (),
    vocab: list[str] | None = None,
    max_length: int = 12,
    tokenizer: str = "words",
    seed: int = 0,
) -> CaptionedImages:
    """Text-to-video clips (served as captioned_digits' images are): one digit of `moving_digits` in a colour (FOREGROUNDS) on black,
    setting off along one of the eight DIRECTIONS (it bounces on), captioned "a red three moving
    up and to the left". Clips of a `held_out` combination ("digit=3,direction=up") are left out
    of "train" (kept in "val")."""
    moving = moving_digits(
        split, root, frames, image_size, 1, speed, glyph_size, clips, seed, directions=8
    )
    generator = torch.Generator().manual_seed(seed * 2 + SPLITS.index(split) + 1000)
    colour = torch.randint(len(FOREGROUNDS), (len(moving),), generator=generator)
    attributes = torch.stack([moving.labels, colour, moving.directions], dim=1)
    combos, grey = CLIP_CAPTIONS.parse_held_out(held_out), moving.images
    if split == "train" and combos:
        keep = ~CLIP_CAPTIONS.is_held_out(attributes, combos)
        grey, attributes = grey[keep], attributes[keep]
    rgb = torch.tensor(list(FOREGROUNDS.values()), dtype=torch.float32)[attributes[:, 1]]
    coloured = grey.float() / 255 * rgb[:, :, None, None, None]  # (N, 3, T, H, W)
    captions = CLIP_CAPTIONS.captions(attributes)
    tokens = make_tokenizer(tokenizer, vocab or CLIP_CAPTIONS.vocab(), max_length).encode(captions)
    clips_u8 = coloured.round().clamp(0, 255).to(torch.uint8)
    return CaptionedImages(clips_u8, tokens, captions, attributes, combos, CLIP_CAPTIONS)


def moving_digit_frames(
    split: str,
    root: str | None = None,
    image_size: int = 32,
    num_digits: int = 1,
    glyph_size: int | None = None,
    images: Mapping[str, int | None] | None = None,
    seed: int = 0,
) -> TensorImages:
    """Single frames of `moving_digits` (the glyphs at random places, the same sizes) as images
    (N, 1, S, S): what an image net learns before `model.init_from` makes it a video net's
    spatial layers. `images` caps each split (default: every glyph once)."""
    caps = {"train": None, "val": 1000, **(images or {})}
    clips = moving_digits(
        split, root, frames=1, image_size=image_size, num_digits=num_digits,
        glyph_size=glyph_size, clips=caps, seed=seed + 1,  # other places than the clips' starts
    )  # fmt: skip
    return TensorImages(clips.images[:, :, 0], clips.labels)


def read_clip(path: Path, frames: int, stride: int = 1) -> Tensor:
    """The first `frames` frames, every `stride`-th, of a video file as uint8 RGB (T, H, W, 3),
    decoded by PyAV (FFmpeg's decoders, bundled in its wheels: mp4, webm, gif, ... with no
    system FFmpeg). ValueError, saying why, for a file that is not a video or is too short."""
    import av

    picked = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride == 0:
                    picked.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if len(picked) == frames:
                    break
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    if len(picked) < frames:
        raise ValueError(f"{len(picked)} frames at stride {stride}, {frames} needed")
    return torch.stack(picked)


def _video_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)


def video_folder_classes(root: str) -> int:
    """How many classes a video folder's first-level subfolders make (0: unlabelled)."""
    base = Path(root)
    return len(_classes(base, _video_files(base))) if base.is_dir() else 0


@functools.lru_cache(maxsize=4)
def _decoded_folder(
    root: str, frames: int, stride: int, image_size: int, channels: int
) -> tuple[Tensor, Tensor]:
    """Every readable clip under root, resized (shorter side) and center-cropped: uint8
    (N, C, T, S, S) and labels (N,), decoded once for both splits; one warning names the files
    skipped."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(
            f"video folder {base.resolve()} does not exist. Fix: set data.dataset.root"
        )
    files = _video_files(base)
    resize = v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])
    clips, good, bad = [], [], []
    for path in files:
        try:
            clip = read_clip(path, frames, stride).permute(
                0, 3, 1, 2
            )  # (T, H, W, 3) -> (T, 3, H, W)
        except ValueError as e:
            bad.append(f"{path} ({e})")
            continue
        clip = resize(clip)
        if channels == 1:
            clip = clip.float().mean(1, keepdim=True).round().to(torch.uint8)
        clips.append(clip.transpose(0, 1))  # (T, C, S, S) -> (C, T, S, S)
        good.append(path)
    if bad:
        log.warning("video folder %s: skipping %d unreadable or short file(s) of %d, e.g. %s",
                    base, len(bad), len(files), "; ".join(bad[:3]))  # fmt: skip
    if len(good) < 2:
        raise FileNotFoundError(
            f"found {len(good)} readable clips of {frames} frames (stride {stride}) under "
            f"{base.resolve()} (extensions {VIDEO_EXTENSIONS}); need >= 2"
        )
    classes = _classes(base, good)
    labels = [classes.index(p.relative_to(base).parts[0]) if classes else 0 for p in good]
    log.info("video folder %s: %d clips of %d frames", base, len(good), frames)
    return torch.stack(clips), torch.tensor(labels)


def video_folder(
    split: str,
    root: str,
    frames: int = 8,
    stride: int = 1,
    image_size: int = 64,
    channels: int = 3,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> TensorClips:
    """A clip from the start of every video under `root` (any depth; labels: the first-level
    subfolders, when every file lies in one), `frames` frames taken every `stride`, held in
    memory; a fixed-seed train/val split. Files that cannot be decoded, or are shorter, are
    skipped with a count and examples."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if frames < 1 or stride < 1:
        raise ValueError(f"frames and stride must be >= 1, got {frames} and {stride}")
    clips, labels = _decoded_folder(str(Path(root).resolve()), frames, stride, image_size, channels)
    index = _split_indices(len(clips), split, val_fraction, seed)
    return TensorClips(clips[index], labels[index])


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
