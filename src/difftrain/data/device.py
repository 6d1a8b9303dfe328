"""Training batches of an in-memory dataset, served from the training device.

The whole dataset (uint8 images, or toy points) is moved to the device once; each step's batch is
gathered, converted to the model's range and augmented there, with no loader workers and no
copies from the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from difftrain.runtime import shared_seed
from difftrain.streams import Share

Transform = Callable[[Tensor, torch.Generator, Share], Tensor]


class DeviceBatches:
    """An iterable of (x, labels) batches, for Lightning's training loop.

    Epoch e shuffles the N examples by a permutation drawn from (seed, e); global batch k is the
    next batch_size x world_size of them, and process `rank` takes its share. So the global
    batches are the same for any number of processes, as DDP sharding needs. Where to start is
    read from the training step (`step()`), so a resumed run (or one that `limit_train_batches`
    cuts into short epochs) continues exactly where it stopped, with no state of its own. The
    last incomplete batch of an epoch is dropped.

    `transform(x, generator, share)` makes the batch: uint8 to the model's range, augmentation
    drawn from a generator seeded by (seed, step) for the global batch, this process's share kept.
    """

    def __init__(
        self,
        data: Tensor,
        labels: Tensor,
        batch_size: int,
        transform: Transform,
        step: Callable[[], int],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.data, self.labels, self.transform, self.step = data, labels, transform, step
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.global_batch = batch_size * world_size
        if len(data) < self.global_batch:
            raise ValueError(
                f"{len(data)} training examples are fewer than one global batch of "
                f"{self.global_batch} (data.batch_size={batch_size} x {world_size} processes): "
                "lower data.batch_size"
            )

    def __len__(self) -> int:
        return len(self.data) // self.global_batch

    def state_dict(self) -> dict[str, int]:
        """Lightning's resumable-loader interface. The position is the training step, which the
        checkpoint already restores, so there is nothing else to keep (and Lightning no longer
        warns that a mid-epoch resume is unreliable)."""
        return {"step": self.step()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to load: the next batch follows from the restored training step."""

    def _order(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(len(self.data), generator=generator).to(self.data.device)

    def __iter__(self) -> Iterator[list[Tensor]]:
        step = self.step()
        epoch, first = divmod(step, len(self))
        order = self._order(epoch)
        for k in range(first, len(self)):
            start = k * self.global_batch + self.rank * self.batch_size
            index = order[start : start + self.batch_size]
            generator = torch.Generator(self.data.device).manual_seed(
                (self.seed * 7_919 + epoch * len(self) + k) % 2**63
            )
            share = Share(self.rank, self.world_size)
            yield [self.transform(self.data[index], generator, share), self.labels[index]]


def augment_batch(
    x: Tensor, generator: torch.Generator, share: Share, hflip: bool, translate: float
) -> Tensor:
    """Random horizontal flips and translations (up to `translate` x the size, zero fill) of a
    batch (B, C, H, W) in [0, 1], drawn for the global batch and this `share` kept."""
    if not hflip and not translate:
        return x
    n, options = len(x) * share.world, {"device": x.device, "generator": generator}
    if hflip:
        flip = share.of(torch.rand(n, **options)) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if translate:
        height, width = x.shape[-2:]
        u = share.of(torch.rand(n, 2, **options)) * 2 - 1  # (B, 2) in [-1, 1)
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        for axis, size in enumerate((width, height)):  # python sizes: nothing copied to the device
            theta[:, axis, 2] = -2 * (u[:, axis] * size * translate).round() / size
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x


def device_batches(
    datamodule: L.LightningDataModule, data: Tensor, labels: Tensor, transform
) -> DeviceBatches:
    """The DeviceBatches of a datamodule's training set, for the trainer it is attached to."""
    trainer = datamodule.trainer
    seed = shared_seed(datamodule.seed, trainer.strategy)
    device = trainer.strategy.root_device
    return DeviceBatches(
        data.to(device), torch.as_tensor(labels).to(device), datamodule.batch_size, transform,
        step=lambda: trainer.global_step * trainer.accumulate_grad_batches, seed=seed,
        rank=trainer.global_rank, world_size=trainer.world_size,
    )  # fmt: skip
