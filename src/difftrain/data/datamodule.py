"""`ImageDataModule`: owns the dataset splits, augmentation and normalization."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision.transforms import v2

from difftrain.console import Progress
from difftrain.data.device import DeviceBatches, augment_batch, device_batches
from difftrain.data.media import Images
from difftrain.files import filling, load_cached, save_atomically
from difftrain.streams import Share

log = logging.getLogger(__name__)


def described(obj: object) -> str:
    """`repr(obj)` without memory addresses ("<function f at 0x7f...>"), which differ in every
    process: the same dataset config is described alike by every run, so a cache keyed by it
    is found again."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


class _Mapped(Dataset):
    """Applies an image transform to a dataset of (image, label)."""

    def __init__(self, dataset: Dataset, transform: Callable[[Tensor], Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.dataset[i]
        return self.transform(x), y


class _Latents(Dataset):
    """An image dataset's latents with its labels; `.dataset` is the image dataset (captions,
    judges and evaluation read the images)."""

    def __init__(self, dataset: Dataset, latents: Tensor):
        self.dataset, self.images = dataset, latents  # `images`: what the device batches serve
        labels = getattr(dataset, "labels", None)
        self.labels = labels if labels is not None else [dataset[i][1] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, object]:
        return self.images[i], self.labels[i]


class ImageDataModule(L.LightningDataModule):
    """Batches of (images (B, C, S, S) in `value_range`, labels (B,)) for training and validation.

    `dataset(split)` returns images in [0, 1]; augmentation (train split only) acts there,
    then images are mapped to the model's value range. With an `autoencoder` (latent diffusion),
    the batches are the images' latents instead: each split is encoded once, unaugmented, and
    cached under `latent_cache` by a fingerprint of the data and the autoencoder.
    """

    def __init__(
        self,
        dataset: Callable[[str], Dataset],
        image_size: int,
        channels: int,
        num_classes: int,
        value_range: Sequence[float] = (-1.0, 1.0),
        sample_shape: Sequence[int] | None = None,
        media: Images | None = None,
        hflip: bool = False,
        translate: float = 0.0,
        batch_size: int = 128,
        val_batch_size: int = 256,
        num_workers: int = 0,
        on_device: bool = True,
        seed: int | None = 0,
        autoencoder: nn.Module | None = None,
        latent_cache: str | Path | None = None,
    ):
        super().__init__()
        if value_range[0] >= value_range[1]:
            raise ValueError(f"value_range must be increasing, got {list(value_range)}")
        if autoencoder is not None and (hflip or translate):
            raise ValueError(
                "data.hflip and data.translate augment images, and an autoencoder's latents are "
                "encoded once: set data.hflip=false data.translate=0 for latent diffusion"
            )
        self.autoencoder, self.latent_cache = autoencoder, latent_cache
        self.dataset, self.image_size, self.channels = dataset, image_size, channels
        self.num_classes, self.value_range = num_classes, tuple(value_range)
        self.batch_size, self.val_batch_size, self.num_workers = (
            batch_size,
            val_batch_size,
            num_workers,
        )
        self.hflip, self.translate, self.on_device, self.seed = hflip, translate, on_device, seed
        self.media = media or Images(value_range)
        self.declared_shape = None if sample_shape is None else tuple(sample_shape)
        augment = [v2.RandomHorizontalFlip()] if hflip else []
        if translate > 0:
            augment.append(v2.RandomAffine(degrees=0.0, translate=(translate, translate)))
        self.augment = v2.Compose(augment) if augment else v2.Identity()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.train_resolution: int | None = None

    def set_train_resolution(self, size: int | None) -> None:
        """Train on images downsampled (area) to size x size from now on; None: full size."""
        self.train_resolution = None if size == self.image_size else size

    def on_after_batch_transfer(self, batch: object, dataloader_idx: int) -> object:
        trainer = getattr(self, "trainer", None)
        if self.train_resolution and trainer is not None and trainer.training:
            x, labels = batch
            batch = [self.media.resize(x, self.train_resolution), labels]
        return batch

    def normalize(self, x: Tensor) -> Tensor:
        return self.media.normalize(x)

    def _train_transform(self, x: Tensor) -> Tensor:
        return self.normalize(self.augment(x))

    def _device_transform(self, images: Tensor, generator: torch.Generator, share: Share) -> Tensor:
        """A batch of uint8 images on the device: augmented, then in the model's range."""
        x = images.float() / 255
        return self.normalize(augment_batch(x, generator, share, self.hflip, self.translate))

    def examples(self, n: int) -> Tensor:
        """The first n training examples (all, if fewer) as the net takes them, unaugmented:
        images in the model's range, or their latents; (n, *sample_shape)."""
        self.setup("fit")
        if isinstance(self.train_set, _Latents):
            return self.train_set.images[:n]
        images = self.train_set.dataset
        held = getattr(images, "images", None)
        if isinstance(held, Tensor) and held.dtype == torch.uint8:
            return self.normalize(held[:n].float() / 255)
        return torch.stack([self.normalize(images[i][0]) for i in range(min(n, len(images)))])

    def to_uint8(self, x: Tensor) -> Tensor:
        """The exact inverse of `normalize`, to uint8 in the same layout (B, C, H, W)."""
        return self.media.to_uint8(x)

    def prompts(self, n: int) -> list[str] | None:
        """The first n captions of the validation set (cycled), for a captioned dataset; else None."""
        captions = getattr(self.val_set.dataset, "captions", None) if self.val_set else None
        return [captions[i % len(captions)] for i in range(n)] if captions else None

    def caption_rows(self) -> Tensor | None:
        """The token rows of every training and validation caption, for a captioned dataset."""
        sets = [s.dataset for s in (self.train_set, self.val_set) if s is not None]
        if not sets or getattr(sets[0], "captions", None) is None:
            return None
        return torch.cat([torch.as_tensor(s.labels) for s in sets])

    def save_samples(self, samples: Tensor, path: str | Path) -> Path:
        """The media's preview of model-range samples: a PNG grid of images."""
        return self.media.preview(self.media.stored(samples), path)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self._check_shape()
        train, val = self.dataset("train"), self.dataset("val")
        self._check(train)
        if self.autoencoder is not None:
            self.train_set = _Latents(train, self._latents(train, "train"))
            self.val_set = _Latents(val, self._latents(val, "val"))
            return
        self.train_set = _Mapped(train, self._train_transform)
        self.val_set = _Mapped(val, self.normalize)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """What the dataset yields per example: an image (C, S, S)."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What a training batch holds per example: the data's, or its latent."""
        if self.autoencoder is None:
            return self.data_shape
        size = self.image_size // self.autoencoder.factor
        return (self.autoencoder.latent_channels, size, size)

    def _latents(self, dataset: Dataset, split: str) -> Tensor:
        """The autoencoder's latents of every image of a split, from the cache where they are."""
        key = f"{described(self.dataset)}:{split}:{len(dataset)}:{self.sample_shape}:{self.value_range}"
        key += f":{self.autoencoder.fingerprint()}"
        if self.latent_cache is None:
            return self._encode(dataset, split)
        name = f"{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        file = Path(self.latent_cache, name)
        with filling(file):  # another run encoding the same images: wait for it, then read
            if (latents := load_cached(file)) is not None:
                return latents
            latents = self._encode(dataset, split)
            save_atomically(latents, file)
        log.info("encoded %d %s images to latents %s -> %s", len(latents), split,
                 tuple(latents.shape[1:]), file)  # fmt: skip
        return latents

    @torch.no_grad()
    def _encode(self, dataset: Dataset, split: str) -> Tensor:
        device = next(self.autoencoder.parameters()).device
        progress = Progress(f"encoding the {split} images to latents", len(dataset))
        latents = []
        for x, _ in DataLoader(_Mapped(dataset, self.normalize), batch_size=256):
            latents.append(self.autoencoder.encode(x.to(device)).cpu())
            progress.update(len(x))
        progress.close()
        return torch.cat(latents)

    def _check_shape(self) -> None:
        """Refuse a `sample_shape` (what the net is told it takes) other than what is served."""
        if self.declared_shape is not None and self.declared_shape != self.sample_shape:
            shape = ",".join(map(str, self.sample_shape))
            latents = " (the autoencoder's latents)" if self.autoencoder is not None else ""
            raise ValueError(
                f"data.sample_shape={list(self.declared_shape)}, but the data serves samples of "
                f"shape {list(self.sample_shape)}{latents}: set data.sample_shape=[{shape}]"
            )

    def _check(self, dataset: Dataset) -> None:
        x, y = dataset[0]
        if tuple(x.shape) != self.data_shape:
            raise ValueError(
                f"dataset yields samples of shape {tuple(x.shape)} but data.channels/data.image_size "
                f"say {self.data_shape}: make them agree"
            )
        labels = getattr(dataset, "labels", None)
        top = int(torch.as_tensor(labels).max()) if labels is not None and len(labels) else y
        if self.num_classes and top >= self.num_classes:
            raise ValueError(f"dataset has label {top} but data.num_classes={self.num_classes}")

    def _loader(self, dataset: Dataset | None, batch_size: int, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        # The training loader is stateful: checkpoints carry its order and position (exact resume).
        loader = StatefulDataLoader if train else DataLoader
        return loader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        """In-memory datasets (digits, mnist, cifar10) are served from the training device
        (`on_device`); others by a stateful loader with workers (exact resume either way)."""
        if isinstance(self.train_set, _Latents) and self.on_device and self.trainer is not None:
            latents = self.train_set
            return device_batches(self, latents.images, latents.labels, lambda z, g, s: z)
        held = getattr(self.train_set.dataset, "images", None) if self.train_set else None
        in_memory = isinstance(held, Tensor) and held.dtype == torch.uint8
        if self.on_device and in_memory and self.trainer is not None:
            return device_batches(self, held, self.train_set.dataset.labels, self._device_transform)
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, train=False)
