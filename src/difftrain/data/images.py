"""Writing images: sample grids as PNG, sample sets as npz (or PNG folders) as they are drawn."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid


def grid_array(images: Tensor, nrow: int) -> np.ndarray:
    """uint8 images (B, H, W, C) tiled nrow per row, 2 px apart: (H', W', C)."""
    grid = make_grid(images.permute(0, 3, 1, 2), nrow=nrow, padding=2, pad_value=0)
    return grid.permute(1, 2, 0).numpy()


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save uint8 images (B, H, W, C) as one PNG grid, nrow images per row (default: square)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = grid_array(images, nrow or math.ceil(math.sqrt(len(images))))
    Image.fromarray(array[..., 0] if images.shape[-1] == 1 else array).save(path)
    return path


class SampleWriter:
    """Writes a set of samples as it is drawn, so that sampling stopped or failed part-way leaves
    the samples drawn so far.

    format npz: one archive with the samples under `media.key` and the `extra` arrays (those in
    `per_sample`, one entry per sample, cut to the samples written), written whole to a temporary
    file renamed into place at the end, every `every` seconds, and by `write` after a stop. format
    png: a folder of 000000.png, 000001.png, ..., a batch at a time. The output is created when the
    writer is, so a path that cannot be written fails (OSError) before anything is drawn.
    """

    def __init__(
        self,
        out: str | Path,
        format: str,
        media: object,  # data.media.Images | Videos | Points: the key and layout of the samples
        per_sample: dict[str, np.ndarray] | None = None,
        head: int = 64,
        every: float = 300.0,
    ):
        self.out, self.format, self.media, self.every = Path(out), format, media, every
        self.per_sample, self.extra = dict(per_sample or {}), {}
        self.parts: list[Tensor] = []  # npz: every batch; png: the first `head` samples (a grid)
        self.count, self.head_size = 0, head
        self.tmp = self.out.with_name(f".{self.out.name}.tmp")
        if format == "png":
            self.out.mkdir(parents=True, exist_ok=True)
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.touch()  # proves the folder writable before any sampling
        self.written = time.monotonic()

    def add(self, batch: Tensor) -> None:
        """Keep a batch of samples in the media's stored layout (`data.media`: uint8 images
        (B, H, W, C), clips (B, T, H, W, C), float points (B, D))."""
        self.media.check_stored(batch)
        if self.format == "png":
            save_pngs(batch, self.out, self.count)
        if self.format == "npz" or self.count < self.head_size:
            self.parts.append(batch)
        self.count += len(batch)
        if self.format == "npz" and time.monotonic() - self.written >= self.every:
            self.write()

    def samples(self) -> Tensor:
        """The samples kept so far (npz), concatenated."""
        return torch.cat(self.parts)

    def head(self, k: int) -> Tensor:
        """The first k samples (for a grid), whatever the format."""
        return torch.cat(self.parts)[:k]

    def write(self) -> Path:
        """Write the samples so far (a PNG folder is written already); the output's path."""
        if self.format == "png":
            return self.out
        per_sample = {k: v[: self.count] for k, v in self.per_sample.items()}
        with open(self.tmp, "wb") as f:
            np.savez(f, **{self.media.key: self.samples().numpy()}, **self.extra, **per_sample)
        os.replace(self.tmp, self.out)
        self.written = time.monotonic()
        return self.out

    def discard(self) -> None:
        """Nothing was drawn: leave nothing behind."""
        self.tmp.unlink(missing_ok=True)


def save_pngs(images: Tensor, folder: str | Path, start: int = 0) -> Path:
    """Save uint8 images (B, H, W, C) as folder/000000.png, 000001.png, ... (numbered from
    `start`: a batch of a larger set)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images.numpy(), start):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            folder / f"{i:06d}.png"
        )
    return folder
