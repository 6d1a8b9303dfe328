"""Datasets as functions of the split ("train" or "val") yielding (image (C, S, S) in [0, 1], label).

Each is configured in `conf/data/*.yaml` as a partial: the datamodule calls it once per split.
Small datasets are decoded once into a uint8 tensor held in memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.transforms import v2

SPLITS = ("train", "val")


class TensorImages(Dataset):
    """uint8 images (N, C, H, W) and integer labels (N,), served as floats in [0, 1]."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i].float() / 255, int(self.labels[i])


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resize uint8 images (N, C, H, W) to size x size with antialiased bilinear interpolation."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x.round().clamp(0, 255).to(torch.uint8)


def _split_indices(n: int, split: str, val_fraction: float, seed: int) -> Tensor:
    """A fixed-seed train/val split for datasets that have none."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    return perm[:n_val] if split == "val" else perm[n_val:]


def digits(
    split: str, image_size: int = 16, val_fraction: float = 0.1, seed: int = 0
) -> TensorImages:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), resized."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (
        torch.from_numpy(bunch.images).float().div(16).mul(255).round().to(torch.uint8)[:, None]
    )
    idx = _split_indices(len(images), split, val_fraction, seed)
    labels = torch.from_numpy(bunch.target)
    return TensorImages(_resize_uint8(images[idx], image_size), labels[idx])


def _torchvision(cls: type, name: str, split: str, root: str, download: bool) -> Dataset:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    try:
        return cls(root=root, train=split == "train", download=download)
    except RuntimeError as e:
        where = Path(root).resolve() / name
        raise FileNotFoundError(
            f"{name} not found or incomplete under {where} ({e}). Fix: set data.dataset.root to the "
            f"folder that holds {name}/ (e.g. data.dataset.root=../shared/data), or download it with "
            f"data.dataset.download=true"
        ) from e


def mnist(split: str, root: str, download: bool = False, image_size: int = 32) -> TensorImages:
    """MNIST (torchvision layout under root/MNIST/raw); "val" is the official test split."""
    ds = _torchvision(tvd.MNIST, "MNIST", split, root, download)
    return TensorImages(_resize_uint8(ds.data[:, None], image_size), ds.targets)


def cifar10(split: str, root: str, download: bool = False, image_size: int = 32) -> TensorImages:
    """CIFAR-10 (torchvision layout under root/cifar-10-batches-py); "val" is the official test split."""
    ds = _torchvision(tvd.CIFAR10, "cifar-10-batches-py", split, root, download)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return TensorImages(_resize_uint8(images, image_size), torch.tensor(ds.targets))


class ImageFolder(Dataset):
    """Every image under `root` (any depth), resized and center-cropped to image_size.

    Labels are the first-level subfolder's index (sorted names) when all images lie in
    subfolders, else 0.
    """

    def __init__(self, files: list[Path], labels: list[int], image_size: int, channels: int):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        self.files, self.labels, self.mode = files, labels, "L" if channels == 1 else "RGB"
        self.transform = v2.Compose(
            [v2.PILToTensor(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path = self.files[i]
        try:
            with Image.open(path) as img:
                image = img.convert(self.mode)
        except (OSError, UnidentifiedImageError) as e:
            raise RuntimeError(
                f"cannot read image {path}: {e}. Fix: remove or replace the file, then restart"
            ) from e
        return self.transform(image).float() / 255, self.labels[i]


def image_folder(
    split: str,
    root: str,
    image_size: int,
    channels: int = 3,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> ImageFolder:
    """Any folder tree of images (png, jpg, ...), with a fixed-seed train/val split."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(
            f"image folder {base.resolve()} does not exist. Fix: set data.dataset.root"
        )
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in tvd.folder.IMG_EXTENSIONS)
    if len(files) < 2:
        raise FileNotFoundError(
            f"found {len(files)} images under {base.resolve()} (extensions {tvd.folder.IMG_EXTENSIONS}); need >= 2"
        )
    in_subfolders = all(len(p.relative_to(base).parts) > 1 for p in files)
    classes = sorted({p.relative_to(base).parts[0] for p in files}) if in_subfolders else []
    labels = [classes.index(p.relative_to(base).parts[0]) if classes else 0 for p in files]
    idx = _split_indices(len(files), split, val_fraction, seed).tolist()
    return ImageFolder([files[i] for i in idx], [labels[i] for i in idx], image_size, channels)
