"""Writing images: sample grids as PNG, sample sets as npz."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save uint8 images (B, H, W, C) as one PNG grid, nrow images per row (default: square)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images.permute(0, 3, 1, 2), nrow=nrow, padding=2, pad_value=0)
    array = grid.permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if images.shape[-1] == 1 else array).save(path)
    return path


def save_npz(images: Tensor, path: str | Path, **extra: np.ndarray) -> Path:
    """Save uint8 images (B, H, W, C) under the key `images`, with optional extra arrays."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"expected uint8 images (B, H, W, C), got {images.dtype} {tuple(images.shape)}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images.numpy(), **extra)
    return path


def save_pngs(images: Tensor, folder: str | Path) -> Path:
    """Save uint8 images (B, H, W, C) as folder/000000.png, 000001.png, ..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images.numpy()):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            folder / f"{i:06d}.png"
        )
    return folder
