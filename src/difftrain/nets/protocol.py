"""The contract between a denoiser network and everything that drives it.

`diffusion.denoiser.Denoiser`, classifier-free guidance, the samplers and the training module see a
net only through this protocol. Conditioning travels as a mapping of named tensors, batch first,
that they pass through untouched (k-diffusion's `extra_args`): `class_labels` (B,), `text_tokens`
(B, L) and, in training only, `augment_labels` (B, D); a new kind of conditioning is a new name
that the net reads, with no new argument anywhere else.

A net that reads text also has a `tokenizer` (`text.tokenizer`'s WordTokenizer or TextTokenizer:
prompts to `text_tokens`); the training module and `Diffusion.generate` look for it. Its empty caption (all
padding) is its "no prompt", which `null_cond` gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

Cond = Mapping[str, Tensor]


@runtime_checkable
class Net(Protocol):
    """A raw network F(x, c_noise, **cond) with the shape of x: (B, *sample_shape)."""

    sample_shape: tuple[int, ...]  # one sample: (C, H, W) images, (C, T, H, W) clips, (D,) points
    num_classes: int  # 0: unconditional; else labels 0..num_classes-1, and num_classes means none
    augment_dim: int  # length of the augmentation labels it reads (0: it reads none)

    def __call__(self, x: Tensor, c_noise: Tensor, **cond: Tensor) -> Tensor:
        """F for inputs x (B, *sample_shape) and noise conditioning c_noise (B,)."""
        ...

    def null_cond(self, cond: Cond) -> dict[str, Tensor]:
        """The unconditional counterpart of `cond`, batch for batch (classifier-free guidance)."""
        ...

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError, saying why, when the net cannot take samples of this shape (e.g. a
        resolution curriculum's)."""
        ...


def check_served(net: Net, data: object) -> None:
    """Fail, naming the fix, when a data module that tells its `sample_shape` serves samples of
    another shape than the net takes (images, or latents with an autoencoder)."""
    served = getattr(data, "sample_shape", None)
    if served is not None and tuple(served) != tuple(net.sample_shape):
        raise ValueError(
            f"the data serves samples of shape {tuple(served)} but the net takes "
            f"{tuple(net.sample_shape)}: set data.sample_shape=[{','.join(map(str, served))}]"
        )
