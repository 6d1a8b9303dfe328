"""`PriorPreservation`: DreamBooth's prior-preservation loss (Ruiz et al. 2023, Eq. 2)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from difftrain.diffusion.generate import Diffusion
from difftrain.nets.protocol import Cond
from difftrain.streams import WHOLE, Share

log = logging.getLogger(__name__)


class PriorPreservation(nn.Module):
    """Before training, the base model draws `num_images` samples of `class_prompt` (e.g. "a
    digit"; or a list of prompts, cycled); every training step then mixes as many of them as the
    batch holds into it, each with its prompt, their loss weighted by `weight`. Fine-tuning on a
    few images of a new concept ("an orange seven") thus keeps what the model drew for the class.

    The samples (in the model's space: latents for a latent model) are a buffer, so checkpoints
    carry them and a resumed run mixes in the same ones.
    """

    def __init__(
        self, sample_shape: Sequence[int], class_prompt: str | Sequence[str], num_images: int = 100,
        weight: float = 1.0, guidance: float = 3.0, seed: int = 0,
    ):  # fmt: skip
        super().__init__()
        if num_images < 1 or weight < 0:
            raise ValueError(
                f"model.prior_preservation: num_images={num_images}, weight={weight}: need "
                "num_images >= 1 and weight >= 0"
            )
        prompts = [class_prompt] if isinstance(class_prompt, str) else list(class_prompt)
        self.prompts, self.weight, self.guidance, self.seed = prompts, weight, guidance, seed
        self.register_buffer("images", torch.zeros(num_images, *sample_shape))
        self.register_buffer("drawn", torch.tensor(False))
        self.register_buffer("rows", torch.zeros(0, dtype=torch.long), persistent=False)

    def setup(self, diffusion: Diffusion, denoisers: Sequence[nn.Module]) -> None:
        """Read the class prompt (into a frozen text encoder's table), and draw the class images
        with `diffusion` (the base model) unless a resumed checkpoint brought them."""
        net = diffusion.denoiser.net
        tokenizer = getattr(net, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "model.prior_preservation mixes in images of a class prompt: it needs a net that "
                "reads prompts (a text encoder)"
            )
        self.rows = tokenizer.encode(self.prompts).to(self.images.device)  # (P, L)
        encoder = getattr(denoisers[0].net, "text_encoder", None)
        if hasattr(encoder, "precompute"):  # frozen CLIP: its table gets the class prompt too
            encoder.precompute(self.rows)
        if bool(self.drawn):
            return
        images, _ = diffusion.generate(  # image i of prompt i % P
            len(self.images), prompts=self.prompts, guidance=self.guidance, seed=self.seed
        )
        self.images.copy_(images)
        self.drawn.fill_(True)
        log.info("prior preservation: the base model drew %d images of %d prompt(s), e.g. %r",
                 len(images), len(self.prompts), self.prompts[0])  # fmt: skip

    def mix(
        self, x0: Tensor, cond: Cond, generator: torch.Generator | None, share: Share = WHOLE
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """The batch x0 (B, ...) followed by B class images with their prompts, and each
        example's loss weight (2B,): 1, then `weight`."""
        if set(cond) != {"text_tokens"}:
            raise ValueError(
                f"model.prior_preservation mixes captioned batches only, not {sorted(cond)}"
            )
        n = len(x0)
        draw = torch.randint(len(self.images), (n * share.world,), generator=generator,
                             device=x0.device)  # fmt: skip
        pick = share.of(draw)
        images = self.images[pick].to(x0.dtype)
        tokens = torch.cat([cond["text_tokens"], self.rows[pick % len(self.rows)]])
        weights = torch.cat([x0.new_ones(n), x0.new_full((n,), self.weight)])
        return torch.cat([x0, images]), {"text_tokens": tokens}, weights
