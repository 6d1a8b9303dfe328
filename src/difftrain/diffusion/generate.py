"""Drawing samples: the one path that sample grids, evaluation, checkpoints and the CLIs all take."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from difftrain.diffusion.guidance import Autoguidance, ClassifierFreeGuidance
from difftrain.diffusion.samplers import Sampler
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.nets.protocol import Cond
from difftrain.streams import STEP_STREAM, golden_points, seeded_generator, seeded_noise


def class_labels(
    n: int,
    num_classes: int,
    requested: Sequence[int] | None = None,
    start: int = 0,
    prior: Tensor | None = None,
) -> Tensor | None:
    """The labels of samples start .. start + n - 1: `requested` cycled, by default the classes
    0, 1, 2, ... in turn, or with a `prior` (each class's share, e.g. of clusters) drawn by it:
    sample i takes the class where `golden_points` puts it in the prior's cumulative shares, so
    any n consecutive samples follow it closely. None for an unconditional net."""
    if requested is not None and not num_classes:
        raise ValueError("class labels given, but the net is unconditional (num_classes=0)")
    if not num_classes:
        return None
    if requested is None and prior is not None:
        u = golden_points(torch.arange(start, start + n))
        cumulative = prior.detach().double().cpu().cumsum(0)
        labels = torch.searchsorted(cumulative / cumulative[-1], u, right=True)
        return labels.clamp(max=len(prior) - 1)
    labels = torch.as_tensor(list(requested) if requested is not None else range(num_classes))
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"class_labels must be in [0, {num_classes - 1}], got {labels.tolist()}")
    return labels[torch.arange(start, start + n) % len(labels)]


def prompt_tokens(
    n: int, tokenizer, prompts: Sequence[str] | None = None, start: int = 0
) -> Tensor | None:
    """The token rows (n, L) of samples start .. start + n - 1: `prompts` cycled; None for a net
    that reads no text (`tokenizer` None)."""
    if prompts is not None and tokenizer is None:
        raise ValueError("prompts given, but the net reads no text (it has no text encoder)")
    if tokenizer is None or not prompts:
        return None
    rows = tokenizer.encode(list(prompts))
    return rows[torch.arange(start, start + n) % len(rows)]


def given_values(x0: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The conditioning of samples x0 (B, *shape) given where `mask` (broadcastable to x0, e.g. a
    clip's frames (B, 1, T, 1, 1)) is true: `given`, x0 with 0 elsewhere, and `given_mask`, the
    mask as x0's dtype. What the net reads, the loss leaves out and sampling gives back."""
    mask = mask.to(x0.dtype)
    return {"given": x0 * mask, "given_mask": mask}


def keep_given(x: Tensor, cond: Cond) -> Tensor:
    """Samples x (B, *shape) with the values that `cond` gives (`given_values`) put back."""
    return torch.where(cond["given_mask"].bool(), cond["given"].to(x.dtype), x)


def check_given(given: Tensor, mask: Tensor, n: int, shape: tuple[int, ...]) -> None:
    """Fail, saying why, unless `given` is (n, *shape) and `mask` broadcasts to it leaving some
    value of each sample to draw."""
    if tuple(given.shape) != (n, *shape):
        got = tuple(given.shape)
        raise ValueError(f"given samples must be {(n, *shape)} (n, *sample_shape), got {got}")
    if mask.ndim != given.ndim or len(mask) != n:
        raise ValueError(f"the given mask {tuple(mask.shape)} must broadcast to {(n, *shape)}")
    if mask.bool().expand_as(given).flatten(1).all(1).any():
        raise ValueError("a sample is given whole: leave some of it to draw")


@dataclass
class Diffusion:
    """A denoiser with its noise schedule and default sampler: all that drawing samples needs.

    The denoiser's net (`nets.protocol.Net`) tells the sample shape, the classes and what "no
    class" means for classifier-free guidance. A latent diffusion model has a `decoder` (its
    autoencoder's), which turns each batch of samples into images.
    """

    denoiser: nn.Module  # Denoiser or Ensemble
    schedule: NoiseSchedule
    sampler: Sampler
    decoder: Callable[[Tensor], Tensor] | None = None  # latents to model-range images
    class_prior: Tensor | None = None  # classes drawn by these shares (clusters), else in turn

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.denoiser.net.sample_shape)

    def check_guidance(self, guidance: float, guide: nn.Module | None = None) -> None:
        """Fail, naming the fix, on a guidance scale with nothing to guide by: an unconditional
        net without a `guide` would otherwise sample as if guidance were 1."""
        net = self.denoiser.net
        conditional = net.num_classes > 0 or getattr(net, "tokenizer", None) is not None
        if guidance != 1 and guide is None and not conditional:
            raise ValueError(
                f"guidance={guidance} on an unconditional model: classifier-free guidance needs "
                "class labels or text, so it would change nothing. Fix: give a guide (autoguidance, "
                "a weaker checkpoint of the same data: guide=<ckpt>), or leave guidance at 1"
            )

    def generate(self, n: int, sampler: Sampler | None = None, **options) -> tuple[Tensor, int]:
        """Samples start .. start + n - 1 of stream `seed`, (n, *shape) in the model's space (a
        latent model's decoded: images), and the NFE per sample (default sampler: the run's own).
        `options` as for `batches`."""
        drawn = list(self.batches(n, sampler, **options))
        return torch.cat([x for x, _ in drawn]), drawn[-1][1]

    @torch.no_grad()
    def batches(
        self,
        n: int,
        sampler: Sampler | None = None,
        *,
        seed: int = 0,
        start: int = 0,
        batch_size: int = 256,
        labels: Sequence[int] | None = None,
        prompts: Sequence[str] | None = None,
        guidance: float = 1.0,
        guide: nn.Module | None = None,
        given: Tensor | None = None,
        given_mask: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, int]]:
        """`generate`'s samples a batch at a time, on the CPU, each with the NFE per sample: what
        draws many samples with progress, keeping those drawn so far.

        Sample i starts from its own noise (seed, i) and, for a class-conditional net, has class
        `class_labels(...)[i]`, so a deterministic sampler draws the same images whatever the batch
        size, and n samples split over processes (by `start`) are the n samples of one process.
        A net that reads text (one with a `tokenizer`) draws sample i from `prompts[i % len]`, or
        with no prompt (the empty caption) when there are none. With guidance != 1,
        classifier-free guidance mixes in the unconditional prediction; with a `guide` (a weaker
        denoiser of the same data), autoguidance mixes in the guide's instead.

        A net that reads given values (a video UNet with `given_frames`: prediction,
        interpolation) draws the rest of samples `given` (n, *shape, in the model's range) from
        their values where `given_mask` (broadcastable, e.g. (n, 1, T, 1, 1)) is true, which come
        back unchanged (`given_values`; in training, `training.conditioners.GivenFrames`).
        """
        if n < 1:
            raise ValueError(f"the number of samples must be >= 1, got {n}")
        sampler = sampler or self.sampler
        sampler.check(self.schedule)
        self.check_guidance(guidance, guide)
        net = self.denoiser.net
        y = class_labels(n, net.num_classes, labels, start, self.class_prior)
        tokens = prompt_tokens(n, getattr(net, "tokenizer", None), prompts, start)
        denoiser = self.denoiser
        if guide is not None:
            if tuple(guide.net.sample_shape) != self.shape:
                raise ValueError(
                    f"the guide draws samples of shape {tuple(guide.net.sample_shape)}, this model "
                    f"{self.shape}: autoguidance needs a guide trained on the same data"
                )
            denoiser = Autoguidance(denoiser, guide, guidance)
        elif (y is not None or tokens is not None) and guidance != 1:
            denoiser = ClassifierFreeGuidance(denoiser, guidance, net.null_cond)
        if given is not None:
            check_given(given, given_mask, n, self.shape)
        device = next(self.denoiser.parameters()).device
        for first in range(start, start + n, batch_size):
            index = torch.arange(first, min(first + batch_size, start + n))
            noise = self.denoiser.noise(seeded_noise(seed, index, self.shape).to(device))
            cond = {} if y is None else {"class_labels": y[index - start].to(device)}
            if tokens is not None:
                cond["text_tokens"] = tokens[index - start].to(device)
            if given is not None:
                rows = index - start
                cond.update(given_values(given[rows].to(device), given_mask[rows].to(device)))
            steps = seeded_generator(seed, STEP_STREAM + first, device)
            x, nfe = sampler(
                denoiser,
                noise,
                self.schedule,
                cond=cond,
                generator=steps,
                noise_model=self.denoiser.noise,
            )
            if given is not None:  # the given values, as they were
                x = keep_given(x, cond)
            yield (x if self.decoder is None else self.decoder(x)).cpu(), nfe
