"""Generate n images in batches from a fixed seed: the one path every sample grid and file takes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from difftrain.diffusion.guidance import ClassifierFreeGuidance
from difftrain.diffusion.samplers import Sampler
from difftrain.diffusion.schedules import NoiseSchedule


@torch.no_grad()
def generate(
    denoiser: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    schedule: NoiseSchedule,
    sampler: Sampler,
    shape: tuple[int, int, int],
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    class_labels: Tensor | None = None,
    guidance: float = 1.0,
    null_label: int | None = None,
) -> tuple[Tensor, int]:
    """n samples (n, C, H, W) in the model's value range, and the NFE per sample.

    With class_labels (n,) and guidance != 1, classifier-free guidance mixes in the prediction
    for `null_label`.

    Image i starts from its own generator, seeded by (seed, i), so a deterministic sampler gives
    the same images whatever the batch size; a stochastic sampler's fresh noise comes from one
    generator per batch.
    """
    if class_labels is not None and len(class_labels) != n:
        raise ValueError(f"got {len(class_labels)} class labels for {n} samples")
    if class_labels is not None and guidance != 1:
        if null_label is None:
            raise ValueError(
                "classifier-free guidance needs the null label of a class-conditional net"
            )
        denoiser = ClassifierFreeGuidance(denoiser, guidance, null_label)
    out, nfe = [], 0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        noise = torch.stack(
            [torch.randn(shape, generator=seeded_generator(seed, i)) for i in range(start, stop)]
        )
        step_gen = seeded_generator(seed, n + start, device)
        labels = class_labels[start:stop].to(device) if class_labels is not None else None
        x, nfe = sampler(
            denoiser, noise.to(device), schedule, class_labels=labels, generator=step_gen
        )
        out.append(x.cpu())
    return torch.cat(out), nfe


def seeded_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for item `index` of stream `seed`; torch seeds its CPU generator with 32 bits."""
    return torch.Generator(device=device).manual_seed((seed * 0x9E3779B1 + index) % 2**32)
