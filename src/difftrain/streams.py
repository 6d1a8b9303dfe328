"""Seeded random streams: what makes a run the same for any batch size, number of processes or
resume point.

Every random draw of difftrain comes from a generator seeded by (seed, index): a training step's
from (seed, TRAINING_STREAM + step), sample i's noise from (seed, i), a sampling batch's from
(seed, STEP_STREAM + first index). A global batch is drawn whole and each process keeps its
`Share`. Imports torch only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

STEP_STREAM = 2**31  # item indices stay below it; a batch's sampler noise is drawn from above it
TRAINING_STREAM = 2**30  # the training steps' generators, apart from the samples' items


@dataclass(frozen=True)
class Share:
    """Part `rank` of a global batch split in `world` equal parts (one per training process)."""

    rank: int = 0
    world: int = 1

    def of(self, values: Tensor) -> Tensor:
        """This part of `values`, drawn for the whole global batch (dim 0)."""
        size = len(values) // self.world
        return values[self.rank * size : (self.rank + 1) * size]


WHOLE = Share()  # one process: the whole batch


def seeded_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for item `index` of stream `seed`; torch seeds its CPU generator with 32 bits."""
    return torch.Generator(device=device).manual_seed((seed * 0x9E3779B1 + index) % 2**32)


def seeded_noise(seed: int, indices: Tensor, shape: Sequence[int]) -> Tensor:
    """Standard normal noise (len(indices), *shape): item i from its own generator (seed, i), so it
    is the same whatever the batch, the batch size or the process that draws it."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=seeded_generator(seed, int(i))) for i in indices]
    )


def golden_points(index: Tensor) -> Tensor:
    """frac(0.5 + i x golden ratio) for each i of `index` (float64): low-discrepancy points in
    [0, 1), so any run of consecutive indices spreads evenly over it."""
    return torch.frac(0.5 + index.double() * (math.sqrt(5) - 1) / 2)
