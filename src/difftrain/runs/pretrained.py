"""Trained models from checkpoints: the config saved inside, the EMA denoiser, sampling."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from difftrain.data.media import Images, media_of
from difftrain.diffusion.denoiser import Denoiser, Ensemble
from difftrain.diffusion.generate import Diffusion
from difftrain.diffusion.samplers import Sampler
from difftrain.errors import ConfigError
from difftrain.nets.lora import restore_frozen

EMA_PREFIX = "ema.module."


@dataclass
class TrainedModel:
    """A run's EMA denoiser, schedule and sampler (`diffusion`), with the config it trained with."""

    config: DictConfig
    diffusion: Diffusion
    global_step: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.diffusion.shape

    @property
    def num_classes(self) -> int:
        return self.diffusion.denoiser.net.num_classes

    @property
    def media(self) -> Images:
        """What its samples are outside the model (`data.media`): images, videos or points."""
        return media_of(self.config.data)

    def generate(
        self, n: int, sampler: Sampler | None = None, **options: Any
    ) -> tuple[Tensor, int]:
        """n samples in the model's space, (n, *shape), and the NFE; see `Diffusion.generate`."""
        return self.diffusion.generate(n, sampler, **options)

    def sample(self, n: int, sampler: Sampler | None = None, **options: Any) -> tuple[Tensor, int]:
        """n samples as files store them (`media.stored`: images uint8 (n, H, W, C), clips
        (n, T, H, W, C), points (n, D)), and the NFE; `options` as for `generate`."""
        drawn = list(self.batches(n, sampler, **options))
        return torch.cat([x for x, _ in drawn]), drawn[-1][1]

    def batches(
        self, n: int, sampler: Sampler | None = None, **options: Any
    ) -> Iterator[tuple[Tensor, int]]:
        """`sample`'s samples a batch at a time (`Diffusion.batches`), each with the NFE."""
        media = self.media
        for x, nfe in self.diffusion.batches(n, sampler, **options):
            yield media.stored(x), nfe


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A difftrain checkpoint as a dict; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path.resolve()} does not exist: pass ckpt=<run dir>/checkpoints/last.ckpt"
        )
    # Lightning checkpoints hold plain Python objects besides tensors; only load files you trust.
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it may have been cut "
            "short while being written: use another checkpoint of the run (best.ckpt, phema-*)"
        ) from e
    if "config" not in ckpt.get("hyper_parameters", {}):
        raise ConfigError(
            f"{path} is not a difftrain checkpoint (no config in its hyper_parameters)"
        )
    return ckpt


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the EMA denoiser of a checkpoint from the config saved inside it."""
    ckpt = load_checkpoint(path)
    cfg = upgraded(OmegaConf.create(ckpt["hyper_parameters"]["config"]))
    net = instantiate(cfg.net)
    if cfg.model.get("lora") is not None:  # adapters on the pretrained weights of net.path
        instantiate(cfg.model.lora).apply(net)
    denoiser = Denoiser(net, instantiate(cfg.objective), instantiate(cfg.model.get("noise")))
    state = {
        k[len(EMA_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(EMA_PREFIX)
    }
    if "pretrained" in ckpt:  # a LoRA run's: the adapters alone
        try:
            restore_frozen(state, denoiser, ckpt["pretrained"], [""], str(path))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    denoiser.load_state_dict(state)
    denoiser.to(device).eval().requires_grad_(False)
    decoder = None
    if cfg.get("autoencoder") is not None:  # latent diffusion: samples are decoded
        decoder = instantiate(cfg.autoencoder).to(device).decode
    prior = ckpt["state_dict"].get("clusters.prior")  # cluster conditioning: draw by shares
    if prior is not None:
        prior = prior.to(device)
    schedule, sampler = instantiate(cfg.schedule), instantiate(cfg.sampler)
    diffusion = Diffusion(denoiser, schedule, sampler, decoder, prior)
    return TrainedModel(cfg, diffusion, ckpt["global_step"])


def upgraded(cfg: DictConfig) -> DictConfig:
    """A config saved by an earlier difftrain, in today's terms: nets then took `in_channels` and
    `image_size` where they now take `sample_shape`."""
    net = cfg.get("net")
    if net is not None and "in_channels" in net and "sample_shape" not in net:
        size = net.pop("image_size")
        net.sample_shape = [net.pop("in_channels"), size, size]
    return cfg


def load_guide(path: str | Path, model: TrainedModel) -> torch.nn.Module:
    """The EMA denoiser of a weaker checkpoint of the same data, to guide `model` with
    (autoguidance: an earlier post-hoc EMA of the run, or a smaller net), on `model`'s device."""
    guide = load_trained(path, next(model.diffusion.denoiser.parameters()).device)
    keys = ("data.value_range", "data.image_size", "data.channels", "autoencoder")
    if differ := first_difference(model, guide, keys):
        key, mine, theirs = differ
        raise ValueError(
            f"cannot guide with {path}: its {key} is {theirs}, the model's {mine}; a guide is "
            "a weaker model of the same data (an earlier checkpoint or a smaller net)"
        )
    return guide.diffusion.denoiser


def first_difference(
    a: TrainedModel, b: TrainedModel, keys: Sequence[str]
) -> tuple[str, Any, Any] | None:
    """The first of `keys` whose config value differs between two checkpoints, with both values."""
    for key in keys:
        x, y = OmegaConf.select(a.config, key), OmegaConf.select(b.config, key)
        if x != y:
            return key, x, y
    return None


def load_models(
    paths: str | Path | Sequence[str | Path], device: str | torch.device = "cpu"
) -> TrainedModel:
    """One checkpoint, or several whose denoisers are averaged (an ensemble of the same architecture).

    The ensemble samples with the first checkpoint's schedule and sampler.
    """
    if isinstance(paths, str | Path):
        return load_trained(paths, device)
    models = [load_trained(p, device) for p in paths]
    first = models[0]
    for path, model in zip(paths[1:], models[1:], strict=True):
        if differ := first_difference(first, model, ("net", "data.value_range", "autoencoder")):
            key, a, b = differ
            raise ValueError(
                f"cannot ensemble {paths[0]} and {path}: their {key} differ ({a} vs {b}); "
                "ensembles need the same architecture and data range"
            )
    ensemble = Ensemble([m.diffusion.denoiser for m in models])
    d = first.diffusion
    diffusion = Diffusion(ensemble, d.schedule, d.sampler, d.decoder, d.class_prior)
    return TrainedModel(first.config, diffusion, first.global_step)
