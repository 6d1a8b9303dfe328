"""Datasets as functions of the split ("train" or "val") yielding (image (C, S, S) in [0, 1], label).

Each is configured in `conf/data/*.yaml` as a partial: the datamodule calls it once per split.
Small datasets are decoded once into a uint8 tensor held in memory.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision.transforms import v2

from difftrain.errors import ConfigError

SPLITS = ("train", "val")
log = logging.getLogger(__name__)


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
    split: str, image_size: int = 16, val_fraction: float = 0.1, seed: int = 0, channels: int = 1
) -> TensorImages:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), resized, in
    `channels` identical channels (3: grey RGB images, e.g. to try an RGB recipe)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (
        torch.from_numpy(bunch.images).float().div(16).mul(255).round().to(torch.uint8)[:, None]
    )
    idx = _split_indices(len(images), split, val_fraction, seed)
    labels = torch.from_numpy(bunch.target)
    images = _resize_uint8(images[idx], image_size).expand(-1, channels, -1, -1).contiguous()
    return TensorImages(images, labels[idx])


def _torchvision(cls: type, name: str, split: str, root: str, download: bool) -> Dataset:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    try:
        return cls(root=root, train=split == "train", download=download)
    except RuntimeError as e:
        where = Path(root).resolve() / name
        raise ConfigError(
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


def _image_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*") if p.suffix.lower() in tvd.folder.IMG_EXTENSIONS)


def _classes(base: Path, files: list[Path]) -> list[str]:
    """The first-level subfolders, when every image lies in one (else none: unlabelled)."""
    if not files or not all(len(p.relative_to(base).parts) > 1 for p in files):
        return []
    return sorted({p.relative_to(base).parts[0] for p in files})


def folder_classes(root: str) -> int:
    """How many classes an image folder's subfolders make (0: unlabelled, or no folder yet).

    The configs read it as `${image_folder_classes:${data.dataset.root}}`, so that the net, the
    data and the evaluator agree without anyone counting folders.
    """
    base = Path(root)
    return len(_classes(base, _image_files(base))) if base.is_dir() else 0


def _readable(path: Path) -> str | None:
    """Why an image file cannot be used (empty, not an image, cut short), or None if it can."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            img.verify()  # headers and, for PNG, every chunk's checksum
            kind = img.format
        if kind == "JPEG":  # verify() does not read the scan data: a whole JPEG ends with EOI
            with path.open("rb") as f:
                f.seek(-2, 2)
                if f.read(2) != b"\xff\xd9":
                    return "JPEG cut short (no end marker)"
        return None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        return f"{type(e).__name__}: {e}"


@functools.lru_cache(maxsize=8)
def scan_image_folder(root: str) -> tuple[tuple[Path, ...], tuple[int, ...], tuple[str, ...]]:
    """The readable images under root, their labels and the class names, checked once (in
    parallel threads) with one warning for the files skipped."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(
            f"image folder {base.resolve()} does not exist. Fix: set data.dataset.root"
        )
    files = _image_files(base)
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4)) as pool:
        problems = list(pool.map(_readable, files))
    bad = [(p, why) for p, why in zip(files, problems, strict=True) if why]
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:5])
        log.warning(
            "image folder %s: skipping %d unreadable file(s) of %d, e.g. %s",
            base, len(bad), len(files), shown,
        )  # fmt: skip
    good = [p for p, why in zip(files, problems, strict=True) if not why]
    if len(good) < 2:
        raise FileNotFoundError(
            f"found {len(good)} readable images under {base.resolve()} "
            f"(extensions {tvd.folder.IMG_EXTENSIONS}); need >= 2"
        )
    classes = _classes(base, good)
    labels = [classes.index(p.relative_to(base).parts[0]) if classes else 0 for p in good]
    what = (
        f"{len(classes)} classes ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})"
    )
    log.info("image folder %s: %d images, %s", base, len(good), what if classes else "unlabelled")
    return tuple(good), tuple(labels), tuple(classes)


def image_folder(
    split: str,
    root: str,
    image_size: int,
    channels: int = 3,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> ImageFolder:
    """Any folder tree of images (png, jpg, ...), with a fixed-seed train/val split; files that
    cannot be read are skipped up front (`scan_image_folder`)."""
    files, labels, _ = scan_image_folder(str(Path(root).resolve()))
    idx = _split_indices(len(files), split, val_fraction, seed).tolist()
    return ImageFolder([files[i] for i in idx], [labels[i] for i in idx], image_size, channels)
