"""`DifftrainPipeline`: a run of difftrain's own nets as a diffusers pipeline (custom, not a
diffusers class), which `difftrain-export` writes and `DifftrainPipeline.from_pretrained(DIR)`
loads, offline, with diffusers' API (save_pretrained, `pipe(...)`, `.to(device)`).

Why a custom pipeline and not a diffusers-compatible class: difftrain's UNet, DiT and MLP are
not diffusers architectures, so a diffusers class would mean rewriting them or converting their
weights into a lookalike that samples differently; and most difftrain runs use schedules,
preconditioning and samplers (EDM, Heun with churn, guidance on x0) that diffusers' schedulers
do not all express. The pipeline keeps the net's own code (`DifftrainNet`: the EMA denoiser
rebuilt from the run's resolved config) and samples with the run's own sampler through
`Diffusion.generate`, so it draws what `difftrain-sample` draws, for the same seed, exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin  # noqa: F401  (diffusers looks them up here)
from diffusers.configuration_utils import register_to_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.generate import Diffusion


class DifftrainNet(ModelMixin, ConfigMixin):
    """A difftrain denoiser (its net and objective) as a diffusers model: `config` holds the
    run's resolved net, objective, schedule, sampler and data configs, from which it is rebuilt."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, run: dict[str, Any]):
        super().__init__()
        cfg = OmegaConf.create(run)
        self.denoiser = Denoiser(instantiate(cfg.net), instantiate(cfg.objective))

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> DifftrainNet:
        kwargs["low_cpu_mem_usage"] = False  # built whole: its non-persistent buffers are made
        return super().from_pretrained(*args, **kwargs)

    def diffusion(self) -> Diffusion:
        """The denoiser with the run's schedule and sampler: what samples."""
        cfg = OmegaConf.create(self.config.run)
        return Diffusion(self.denoiser.eval(), instantiate(cfg.schedule), instantiate(cfg.sampler))


class DifftrainPipeline(DiffusionPipeline):
    """Samples of a difftrain run: `pipe(n, seed=0, labels=..., prompts=..., guidance=...)`."""

    def __init__(self, net: DifftrainNet):
        super().__init__()
        self.register_modules(net=net)

    @torch.no_grad()
    def __call__(
        self, num_images: int = 1, *, seed: int = 0, labels: list[int] | None = None,
        prompts: list[str] | None = None, guidance: float = 1.0, output_type: str = "np",
    ) -> np.ndarray | torch.Tensor:  # fmt: skip
        """`num_images` samples in [0, 1] (N, H, W, C) (output_type="np"), or in the model's
        range as the net draws them (output_type="pt"), as difftrain-sample draws them."""
        images, _ = self.net.diffusion().generate(
            num_images, seed=seed, labels=labels, prompts=prompts, guidance=guidance
        )
        if output_type == "pt":
            return images
        low, high = self.net.config.run["data"]["value_range"]
        return ((images - low) / (high - low)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
