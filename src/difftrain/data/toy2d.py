"""Two-dimensional toy data for fast mode-collapse experiments: a ring, a grid, a swiss roll."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from difftrain.data.device import DeviceBatches, device_batches
from difftrain.data.media import Points

KINDS = ("ring", "grid", "swiss_roll")


def toy_centers(kind: str, num_modes: int, scale: float) -> Tensor:
    """Mode centers (M, 2): M points on a circle, a sqrt(M) x sqrt(M) grid, or along a swiss roll."""
    if kind == "ring":
        angle = torch.arange(num_modes) * 2 * math.pi / num_modes
        return scale * torch.stack([angle.cos(), angle.sin()], dim=1)
    if kind == "grid":
        side = math.isqrt(num_modes)
        if side * side != num_modes:
            raise ValueError(f"a grid needs a square number of modes, got {num_modes}")
        axis = torch.linspace(-scale, scale, side)
        return torch.cartesian_prod(axis, axis)
    if kind == "swiss_roll":  # modes: evenly spaced points along the roll
        u = torch.linspace(0, 1, num_modes)
        angle = 1.5 * math.pi * (1 + 2 * u)
        return (
            scale * torch.stack([angle * angle.cos(), angle * angle.sin()], dim=1) / (4.5 * math.pi)
        )
    raise ValueError(f"unknown toy data {kind!r}: use one of {KINDS}")


def toy_points(
    kind: str, n: int, num_modes: int, scale: float, std: float, seed: int
) -> tuple[Tensor, Tensor]:
    """n points (n, 2) and their mode index (n,): a mixture of Gaussians of std `std`."""
    gen = torch.Generator().manual_seed(seed)
    centers = toy_centers(kind, num_modes, scale)
    if kind == "swiss_roll":  # continuous along the roll, noise across it
        u = torch.rand(n, generator=gen)
        angle = 1.5 * math.pi * (1 + 2 * u)
        points = (
            scale * torch.stack([angle * angle.cos(), angle * angle.sin()], dim=1) / (4.5 * math.pi)
        )
        labels = (u * (num_modes - 1)).round().long()
    else:
        labels = torch.randint(0, num_modes, (n,), generator=gen)
        points = centers[labels]
    return points + std * torch.randn(n, 2, generator=gen), labels


class Toy2DDataModule(L.LightningDataModule):
    """Batches of (points (B, 2), mode index (B,)); samples are drawn as scatter plots."""

    def __init__(
        self,
        kind: str = "ring",
        num_modes: int = 8,
        scale: float = 0.7,
        std: float = 0.02,
        num_train: int = 20_000,
        num_val: int = 2_000,
        batch_size: int = 256,
        val_batch_size: int = 1000,
        seed: int = 0,
        media: Points | None = None,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"data.kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.num_modes, self.scale, self.std = kind, num_modes, scale, std
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.centers = toy_centers(kind, num_modes, scale)
        self.media = media or Points()

    def setup(self, stage: str | None = None) -> None:
        args = (self.num_modes, self.scale, self.std)
        self.train_set = TensorDataset(
            *toy_points(self.kind, self.num_train, *args, seed=self.seed)
        )
        self.val_set = TensorDataset(
            *toy_points(self.kind, self.num_val, *args, seed=self.seed + 1)
        )

    def train_dataloader(self) -> DeviceBatches:
        """The points live on the training device; order and position follow the step."""
        points, labels = self.train_set.tensors
        return device_batches(self, points, labels, lambda x, generator, share: x)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size)

    def save_samples(self, samples: Tensor, path: str | Path) -> Path:
        """A scatter plot of samples (N, 2) over the training data."""
        data = self.train_set.tensors[0][:5000] if hasattr(self, "train_set") else self.centers
        title = f"{self.kind}: {len(samples)} samples"
        return self.media.preview(
            self.media.stored(samples), path, background=data, title=title, limit=1.5 * self.scale
        )
