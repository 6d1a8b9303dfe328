"""The kind of media a run generates (images, videos, points): what its samples look like outside
the model.

diffusion/ and the training step work on any (B, *sample_shape) and never ask which. Code that
must know (uint8 conversion, the layout samples are stored in, previews, resizing) asks the data's
media object, chosen by the data config (`data.media`), instead of `x.ndim` or `len(shape)`.

Layouts: the model's space is channels-first, (B, C, H, W) or (B, C, T, H, W); uint8 samples
for metrics stay channels-first (`to_uint8`); files hold them channels-last, (N, H, W, C) or
(N, T, H, W, C) as ADM's evaluator and video readers expect (`stored`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from difftrain.data.images import grid_array, save_grid
from difftrain.data.transforms import to_model_range


class Images:
    """Images (C, H, W) in `value_range`; stored as uint8 (N, H, W, C), previewed as a PNG grid."""

    key = "images"  # what samples are called in an npz and in messages
    formats = ("npz", "png")  # difftrain-sample's format=: an archive, or a folder of PNGs
    layout = "(N, H, W, C)"

    def __init__(self, value_range: Sequence[float] = (-1.0, 1.0)):
        self.value_range = tuple(value_range)

    def normalize(self, x: Tensor) -> Tensor:
        """Values in [0, 1] to the model's range."""
        return to_model_range(x, self.value_range)

    def to_uint8(self, x: Tensor) -> Tensor:
        """Model-range samples to uint8 on the CPU, in the same (channels-first) layout; the exact
        inverse of `normalize` on uint8 / 255, out-of-range values clipped."""
        low, high = self.value_range
        x01 = (x.float() - low) / (high - low)
        return (x01 * 255).round().clamp(0, 255).to(torch.uint8).cpu()

    def stored(self, x: Tensor) -> Tensor:
        """Model-range samples as files hold them: uint8, channels last."""
        u8 = self.to_uint8(x)
        return u8.permute(0, *range(2, u8.ndim), 1)  # (B, C, ...) -> (B, ..., C)

    def from_stored(self, stored: Tensor) -> Tensor:
        """Stored samples (channels last) back to uint8 channels-first, as metrics take them."""
        return stored.permute(0, stored.ndim - 1, *range(1, stored.ndim - 1))

    def check_stored(self, batch: Tensor) -> None:
        """Refuse a batch that is not uint8 in the stored layout."""
        if batch.dtype != torch.uint8 or batch.ndim != len(self.layout.split(",")):
            raise ValueError(
                f"expected uint8 {self.key} {self.layout}, got {batch.dtype} {tuple(batch.shape)}"
            )

    def frames(self, u8: Tensor) -> Tensor:
        """uint8 samples (channels first) as the images an image metric reads: (N, C, H, W)."""
        return u8

    def shape_at(self, shape: Sequence[int], size: int) -> tuple[int, ...]:
        """A sample's shape at side length `size` (a resolution curriculum's)."""
        return (*shape[:-2], size, size)

    def resize(self, x: Tensor, size: int) -> Tensor:
        """A batch downsampled (area) to side length `size`."""
        return F.interpolate(x, size=(size, size), mode="area")

    def preview_size(self, grid_size: int) -> int | None:
        """How many samples a preview shows (None: all)."""
        return grid_size

    def preview(self, stored: Tensor, path: str | Path, nrow: int | None = None) -> Path:
        """Save stored samples as one PNG grid at `path` (.png), nrow per row (default: square)."""
        return save_grid(stored, Path(path).with_suffix(".png"), nrow)


class Videos(Images):
    """Clips (C, T, H, W) in `value_range`; stored as uint8 (N, T, H, W, C), previewed as an
    animated GIF grid (`fps` frames a second) with a PNG strip of frames beside it."""

    key = "videos"
    formats = ("npz",)
    layout = "(N, T, H, W, C)"

    def __init__(self, value_range: Sequence[float] = (-1.0, 1.0), fps: float = 4.0):
        super().__init__(value_range)
        if fps <= 0:
            raise ValueError(f"data.media.fps must be > 0, got {fps}")
        self.fps = fps

    def frames(self, u8: Tensor) -> Tensor:
        """Every frame of every clip: (N, C, T, H, W) -> (N*T, C, H, W)."""
        return u8.transpose(1, 2).flatten(0, 1)

    def resize(self, x: Tensor, size: int) -> Tensor:
        """Every frame downsampled (area) to size x size: (B, C, T, H, W) -> (B, C, T, size, size)."""
        return F.interpolate(x, size=(x.shape[2], size, size), mode="area")

    def preview(self, stored: Tensor, path: str | Path, nrow: int | None = None) -> Path:
        """An animated grid of the clips (path .gif, one grid per frame) and a strip of their
        frames (path .png: a clip per row, its frames left to right, at most 16 clips)."""
        path = Path(path)
        nrow = nrow or math.ceil(math.sqrt(len(stored)))
        grids = [grid_array(stored[:, t], nrow) for t in range(stored.shape[1])]
        pictures = [Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g) for g in grids]
        gif = path.with_suffix(".gif")
        gif.parent.mkdir(parents=True, exist_ok=True)
        pictures[0].save(
            gif, save_all=True, append_images=pictures[1:], duration=round(1000 / self.fps), loop=0
        )
        strip = stored[:16].flatten(0, 1)  # (n, T, H, W, C) -> (n*T, H, W, C): rows of frames
        save_grid(strip, path.with_suffix(".png"), nrow=stored.shape[1])
        return gif


class Points(Images):
    """Low-dimensional points (D,), stored as they are (float (N, D)), previewed as a scatter
    plot of the first two coordinates."""

    key = "points"
    formats = ("npz",)
    layout = "(N, D)"

    def __init__(self):
        super().__init__((-1.0, 1.0))

    def stored(self, x: Tensor) -> Tensor:
        return x.float().cpu()

    def from_stored(self, stored: Tensor) -> Tensor:
        return stored

    def preview_size(self, grid_size: int) -> int | None:
        return None  # a scatter plot shows them all

    def check_stored(self, batch: Tensor) -> None:
        if not batch.is_floating_point() or batch.ndim != 2:
            raise ValueError(
                f"expected float points (N, D), got {batch.dtype} {tuple(batch.shape)}"
            )

    def preview(
        self,
        stored: Tensor,
        path: str | Path,
        nrow: int | None = None,
        background: Tensor | None = None,
        title: str | None = None,
        limit: float | None = None,
    ) -> Path:
        """A scatter plot of the points at `path` (.png), over `background` points (the data) in
        gray, within +-limit on both axes (None: all the points)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        if background is not None:
            ax.scatter(background[:, 0], background[:, 1], s=2, c="lightgray", label="data")
        ax.scatter(stored[:, 0], stored[:, 1], s=2, c="tab:blue", label="samples")
        ax.set(aspect="equal", title=title or f"{len(stored)} samples")
        if limit is not None:
            ax.set(xlim=(-limit, limit), ylim=(-limit, limit))
        ax.legend(loc="upper right", markerscale=4)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return path


def media_of(data: object) -> Images:
    """The media of a data config (its `media`, or for a config saved before there was one:
    points for toy2d, else images in its value range)."""
    from hydra.utils import instantiate

    if data.get("media") is not None:
        return instantiate(data.media)
    if "toy2d" in str(data.get("_target_", "")):
        return Points()
    return Images(data.get("value_range", (-1.0, 1.0)))
