"""Reading a training checkpoint back: its config, its EMA denoiser, schedule and sampler."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from difftrain.data import to_uint8
from difftrain.diffusion import Denoiser, NoiseSchedule, Sampler
from difftrain.diffusion.generate import generate

EMA_PREFIX = "ema.module."


@dataclass
class TrainedModel:
    """What sampling needs from a run: the EMA denoiser and the config it was trained with."""

    config: DictConfig
    denoiser: Denoiser
    schedule: NoiseSchedule
    sampler: Sampler
    global_step: int

    @property
    def shape(self) -> tuple[int, int, int]:
        net = self.denoiser.net
        return (net.in_channels, net.image_size, net.image_size)

    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        *,
        seed: int = 0,
        batch_size: int = 256,
        class_labels: Tensor | None = None,
        guidance: float = 1.0,
    ) -> tuple[Tensor, int]:
        """n images as uint8 (n, H, W, C) from the EMA weights (default: the run's sampler), and the NFE."""
        images, nfe = generate(
            self.denoiser,
            self.schedule,
            sampler or self.sampler,
            self.shape,
            n,
            seed=seed,
            batch_size=batch_size,
            device=next(self.denoiser.parameters()).device,
            class_labels=class_labels,
            guidance=guidance,
            null_label=self.denoiser.net.num_classes,
        )
        return to_uint8(images, self.config.data.value_range), nfe


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A difftrain checkpoint as a dict; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path.resolve()} does not exist: pass ckpt=<run dir>/checkpoints/last.ckpt"
        )
    # Lightning checkpoints hold plain Python objects besides tensors; only load files you trust.
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if "config" not in ckpt.get("hyper_parameters", {}):
        raise ValueError(
            f"{path} is not a difftrain checkpoint (no config in its hyper_parameters)"
        )
    return ckpt


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the EMA denoiser of a checkpoint from the config saved inside it."""
    ckpt = load_checkpoint(path)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    denoiser = Denoiser(instantiate(cfg.net), instantiate(cfg.objective))
    state = {
        k[len(EMA_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(EMA_PREFIX)
    }
    denoiser.load_state_dict(state)
    denoiser.to(device).eval().requires_grad_(False)
    return TrainedModel(
        cfg, denoiser, instantiate(cfg.schedule), instantiate(cfg.sampler), ckpt["global_step"]
    )
