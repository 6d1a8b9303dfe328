"""`DiffusersUNet`: diffusers' UNet2DModel or UNet2DConditionModel as a difftrain net
(`nets.protocol.Net`), pretrained from a local folder or built from a config to train from
scratch, so that every sampler, guidance, EMA, evaluation and callback drives it unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difftrain.diffusion.objectives import Objective
from difftrain.diffusion.scheduler_config import check_trained_with
from difftrain.diffusion.schedules import DiscreteSchedule, NoiseSchedule
from difftrain.nets.conditioning import null_class
from difftrain.nets.protocol import Cond

log = logging.getLogger(__name__)

CLASSES = ("UNet2DModel", "UNet2DConditionModel")
# Small nets for 32x32 images (a few hundred thousand weights), to train from scratch; `config`
# overrides any of these, in diffusers' names.
DEFAULTS: dict[str, dict[str, Any]] = {
    "UNet2DModel": {
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    },
    "UNet2DConditionModel": {
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    },
}


class DiffusersUNet(nn.Module):
    """A diffusers UNet F(x, c_noise, **cond) for samples (C, H, W).

    - **Weights**: `path` (and `subfolder`, e.g. unet in a Stable Diffusion folder) loads a
      pretrained model as `save_pretrained` wrote it; without, `model_class` is built from
      `DEFAULTS` updated by `config`. UNet2DConditionModel reads prompts (a `text_encoder`, whose
      states it cross-attends to, all of them, as Stable Diffusion's pipelines pass them);
      `num_classes` > 0 adds a class embedding with the null class `num_classes`.
    - **Timesteps**: the net is fed the timestep its training used for the noise level sigma =
      exp(4 c_noise): for a DDPM-family `schedule` the fractional index into its T levels,
      interpolated in log sigma (diffusers' `_sigma_to_t`, k-diffusion's `sigma_to_t`); for a
      continuous one (EDM) c_noise itself, as diffusers' EDM schedulers feed it.
    - **Schedule and objective**: a pretrained net's `scheduler_config.json` (`scheduler`, or the
      scheduler folder beside the net's) says what it was trained with; a run whose `schedule` or
      `objective` contradicts it is refused, with the mismatch and the overrides that fix it.
    """

    augment_dim = 0

    def __init__(
        self,
        sample_shape: Sequence[int],
        schedule: NoiseSchedule,
        objective: Objective,
        path: str | None = None,
        subfolder: str | None = None,
        model_class: str | None = None,
        config: Mapping[str, Any] | None = None,
        num_classes: int = 0,
        text_encoder: nn.Module | None = None,
        scheduler: str | None = None,
        checkpoint_activations: bool = False,
    ):
        super().__init__()
        if len(sample_shape) != 3:
            raise ValueError(f"net=diffusers_unet takes images (C, H, W), not {list(sample_shape)}")
        self._sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes, self.text_encoder = num_classes, text_encoder
        self.tokenizer = getattr(text_encoder, "tokenizer", None)
        if path:
            self.model = _load(path, subfolder)
            _check_pretrained(self.model, self._sample_shape, num_classes, text_encoder)
            if (trained := _scheduler_config(path, subfolder, scheduler)) is not None:
                check_trained_with(trained[0], schedule, objective, trained[1])
            else:
                log.warning(
                    "net.path %s: no scheduler_config.json found beside it, so the run's schedule "
                    "and objective cannot be checked against the net's training (net.scheduler)",
                    path,
                )
        else:
            self.model = _build(
                model_class, config or {}, self._sample_shape, num_classes, text_encoder
            )
        if checkpoint_activations:
            self.model.enable_gradient_checkpointing()
        self.conditional = type(self.model).__name__ == "UNet2DConditionModel"
        if self.conditional and text_encoder is None:
            raise ValueError(
                "a UNet2DConditionModel cross-attends to prompts: set text_encoder=clip (or tiny) "
                "and captioned data, or use UNet2DModel (net.model_class=UNet2DModel)"
            )
        if not self.conditional and text_encoder is not None:
            raise ValueError(
                "a UNet2DModel reads no prompts: use net.model_class=UNet2DConditionModel with a "
                "text encoder"
            )
        levels = -0.5 * schedule.log_snrs if isinstance(schedule, DiscreteSchedule) else None
        self.register_buffer("log_sigmas", levels, persistent=False)  # (T,) increasing

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    def null_cond(self, cond: Cond) -> dict[str, Tensor]:
        return null_class(cond, self.num_classes)

    def check_shape(self, shape: Sequence[int]) -> None:
        shape, factor = tuple(shape), 2 ** (len(self.model.config.block_out_channels) - 1)
        if len(shape) != 3 or shape[0] != self._sample_shape[0] or shape[-1] % factor:
            raise ValueError(
                f"this diffusers UNet takes ({self._sample_shape[0]}, H, W) with H and W divisible "
                f"by {factor}, not {list(shape)}"
            )

    def timestep(self, c_noise: Tensor) -> Tensor:
        """The net's timestep for c_noise = log(sigma) / 4 (B,)."""
        if self.log_sigmas is None:
            return c_noise
        table = self.log_sigmas
        log_sigma = (4 * c_noise.double()).clamp(table[0], table[-1])
        high = torch.searchsorted(table, log_sigma).clamp(1, len(table) - 1)
        low = high - 1
        w = (log_sigma - table[low]) / (table[high] - table[low])
        return (low + w).float()

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        *,
        class_labels: Tensor | None = None,
        text_tokens: Tensor | None = None,
    ) -> Tensor:
        t = self.timestep(c_noise.expand(x.shape[0]))
        kwargs: dict[str, Tensor] = {}
        if self.num_classes:
            if class_labels is None:  # the null class
                class_labels = torch.full((len(x),), self.num_classes, device=x.device)
            kwargs["class_labels"] = class_labels
        if self.conditional:
            if text_tokens is None:  # the empty caption
                text_tokens = torch.zeros(
                    (len(x), self.tokenizer.max_length), dtype=torch.long, device=x.device
                )
            states, _ = self.text_encoder(text_tokens)  # (B, L, D), every position
            kwargs["encoder_hidden_states"] = states.to(x.dtype)
        return self.model(x, t, **kwargs, return_dict=False)[0]


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(
            "net=diffusers_unet needs diffusers: pip install -e '.[pretrained]'"
        ) from e
    return diffusers


def _load(path: str, subfolder: str | None) -> nn.Module:
    """The pretrained UNet under path (/subfolder), of the class its config.json names."""
    folder = Path(path, subfolder or "")
    try:
        name = json.loads((folder / "config.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise FileNotFoundError(
            f"net.path: no diffusers model config at {folder / 'config.json'} ({e}). Fix: "
            "net.path=<a folder as save_pretrained writes it> (net.subfolder=unet in a Stable "
            "Diffusion folder)"
        ) from e
    if name not in CLASSES:
        raise ValueError(f"net=diffusers_unet loads {' or '.join(CLASSES)}, not {name} ({folder})")
    return getattr(_diffusers(), name).from_pretrained(
        path, **({"subfolder": subfolder} if subfolder else {})
    )


def _build(
    model_class: str | None, config: Mapping[str, Any], shape: tuple[int, ...], num_classes: int,
    text_encoder: nn.Module | None,
) -> nn.Module:  # fmt: skip
    """A randomly initialised model_class (default: UNet2DConditionModel with a text encoder,
    else UNet2DModel) of DEFAULTS and `config`, for samples `shape` and the conditioning."""
    name = model_class or CLASSES[text_encoder is not None]
    if name not in CLASSES:
        raise ValueError(f"net.model_class={name}: use one of {', '.join(CLASSES)}")
    kwargs = {
        **DEFAULTS[name],
        "sample_size": shape[-1],
        "in_channels": shape[0],
        "out_channels": shape[0],
    }
    if num_classes:
        kwargs["num_class_embeds"] = num_classes + 1  # and the null class
    if text_encoder is not None and name == "UNet2DConditionModel":
        kwargs["cross_attention_dim"] = text_encoder.dim
    return getattr(_diffusers(), name)(**{**kwargs, **dict(config)})


def _check_pretrained(
    model: nn.Module, shape: tuple[int, ...], num_classes: int, text_encoder: nn.Module | None
) -> None:
    """Fail, naming the setting, where the pretrained model cannot take this run's samples or
    conditioning."""
    config = model.config
    if config.in_channels != shape[0] or config.out_channels != shape[0]:
        raise ValueError(
            f"the pretrained UNet takes {config.in_channels} channels, the data {shape[0]}: set "
            f"data.sample_shape=[{config.in_channels},{shape[1]},{shape[2]}] (its latents)"
        )
    classes = config.get("num_class_embeds") or 0
    if num_classes and classes != num_classes + 1:
        raise ValueError(
            f"the pretrained UNet has {classes} class embeddings, so net.num_classes={num_classes} "
            f"(plus the null class) does not fit: set net.num_classes={max(classes - 1, 0)}"
        )
    dim = config.get("cross_attention_dim")
    if text_encoder is not None and dim is not None and dim != text_encoder.dim:
        raise ValueError(
            f"the pretrained UNet cross-attends to states of width {dim}, the text encoder gives "
            f"{text_encoder.dim}: use the text encoder it was trained with (text_encoder.path)"
        )


def _scheduler_config(
    path: str, subfolder: str | None, scheduler: str | None
) -> tuple[dict[str, Any], str] | None:
    """The scheduler config a pretrained net was trained with, and where it was found."""
    if scheduler:
        candidates = [Path(scheduler), Path(scheduler, "scheduler_config.json")]
    else:
        candidates = [Path(path, "scheduler", "scheduler_config.json"),
                      Path(path, subfolder or "", "scheduler_config.json")]  # fmt: skip
    for file in candidates:
        if file.is_file():
            return json.loads(file.read_text()), str(file)
    if scheduler:
        raise FileNotFoundError(f"net.scheduler={scheduler}: no scheduler_config.json there")
    return None
