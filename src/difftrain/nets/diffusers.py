"""diffusers' models as difftrain nets (`nets.protocol.Net`), pretrained from a local folder or
built from a config to train from scratch, so that every sampler, guidance, EMA, evaluation and
callback drives them unchanged: `DiffusersUNet` (UNet2DModel, UNet2DConditionModel) and
`DiffusersTransformer` (DiTTransformer2DModel, PixArtTransformer2DModel).
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


class DiffusersNet(nn.Module):
    """A diffusers model F(x, c_noise, **cond) for samples (C, H, W); subclasses say which
    classes they take (`CLASSES`, the first reads no text, the second prompts), their small
    from-scratch configs (`DEFAULTS`) and how to call them (`call`).

    - **Weights**: `path` (and `subfolder`, e.g. unet or transformer in a pipeline folder) loads
      a pretrained model as `save_pretrained` wrote it; without, `model_class` is built from
      `DEFAULTS` updated by `config` (diffusers' argument names). A text-reading class reads the
      `text_encoder`'s states; `num_classes` > 0 adds class labels with the null class
      `num_classes`.
    - **Timesteps**: the model is fed the timestep its training used for the noise level sigma =
      exp(4 c_noise): for a DDPM-family `schedule` the fractional index into its T levels,
      interpolated in log sigma (diffusers' `_sigma_to_t`, k-diffusion's `sigma_to_t`); for a
      continuous one (EDM) c_noise itself, as diffusers' EDM schedulers feed it.
    - **Schedule and objective**: a pretrained model's `scheduler_config.json` (`scheduler`, or
      the scheduler folder beside the model's) says what it was trained with; a run whose
      `schedule` or `objective` contradicts it is refused, with the mismatch and the overrides
      that fix it.
    - A model that also predicts its variance (DiT's learned sigma: twice the channels out)
      gives its prediction half, as diffusers' pipelines take it.
    """

    CLASSES: tuple[str, str]
    DEFAULTS: dict[str, dict[str, Any]]
    option = "net=diffusers_unet"
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
            raise ValueError(f"{self.option} takes images (C, H, W), not {list(sample_shape)}")
        self._sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes, self.text_encoder = num_classes, text_encoder
        self.tokenizer = getattr(text_encoder, "tokenizer", None)
        if path:
            self.model = self._load(path, subfolder)
            self.check_pretrained()
            if (trained := _scheduler_config(path, subfolder, scheduler)) is not None:
                check_trained_with(trained[0], schedule, objective, trained[1])
            else:
                log.warning(
                    "net.path %s: no scheduler_config.json found beside it, so the run's schedule "
                    "and objective cannot be checked against the net's training (net.scheduler)",
                    path,
                )
        else:
            self.model = self._build(model_class, config or {})
        if checkpoint_activations:
            self.model.enable_gradient_checkpointing()
        self.conditional = type(self.model).__name__ == self.CLASSES[1]
        if self.conditional != (text_encoder is not None):
            need = "reads prompts: set text_encoder=clip (or tiny) and captioned data"
            if not self.conditional:
                need = (
                    f"reads no prompts: use net.model_class={self.CLASSES[1]} with a text encoder"
                )
            raise ValueError(f"a {type(self.model).__name__} {need}")
        levels = -0.5 * schedule.log_snrs if isinstance(schedule, DiscreteSchedule) else None
        self.register_buffer("log_sigmas", levels, persistent=False)  # (T,) increasing

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    def null_cond(self, cond: Cond) -> dict[str, Tensor]:
        return null_class(cond, self.num_classes)

    def check_shape(self, shape: Sequence[int]) -> None:
        shape, factor = tuple(shape), self.size_factor()
        if len(shape) != 3 or shape[0] != self._sample_shape[0] or shape[-1] % factor:
            raise ValueError(
                f"this {type(self.model).__name__} takes ({self._sample_shape[0]}, H, W) with H "
                f"and W divisible by {factor}, not {list(shape)}"
            )

    def timestep(self, c_noise: Tensor) -> Tensor:
        """The model's timestep for c_noise = log(sigma) / 4 (B,)."""
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
        if class_labels is None:  # the null class
            class_labels = torch.full((len(x),), self.num_classes, device=x.device)
        text = None
        if self.conditional:
            if text_tokens is None:  # the empty caption
                text_tokens = torch.zeros(
                    (len(x), self.tokenizer.max_length), dtype=torch.long, device=x.device
                )
            states, mask = self.text_encoder(text_tokens)  # (B, L, D), (B, L)
            text = (states.to(x.dtype), mask)
        out = self.call(x, t, class_labels, text)
        return out[:, : x.shape[1]]  # learned variance (2C channels): the prediction's half

    # What a subclass says about its models.

    def call(
        self, x: Tensor, t: Tensor, labels: Tensor, text: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        raise NotImplementedError

    def size_factor(self) -> int:
        raise NotImplementedError

    def from_scratch(self, name: str) -> dict[str, Any]:
        """The arguments that the samples and the conditioning fix, for a new `name` model."""
        raise NotImplementedError

    def check_pretrained(self) -> None:
        """Fail, naming the setting, where the pretrained model cannot take this run's samples
        or conditioning."""
        config, shape = self.model.config, self._sample_shape
        if config.in_channels != shape[0]:
            raise ValueError(
                f"the pretrained {type(self.model).__name__} takes {config.in_channels} channels, "
                f"the data {shape[0]}: set data.sample_shape=[{config.in_channels},{shape[1]},"
                f"{shape[2]}] (its latents)"
            )

    # Loading and building.

    def _load(self, path: str, subfolder: str | None) -> nn.Module:
        """The pretrained model under path (/subfolder), of the class its config.json names."""
        folder = Path(path, subfolder or "")
        try:
            name = json.loads((folder / "config.json").read_text())["_class_name"]
        except (OSError, ValueError, KeyError) as e:
            raise FileNotFoundError(
                f"net.path: no diffusers model config at {folder / 'config.json'} ({e}). Fix: "
                "net.path=<a folder as save_pretrained writes it> (net.subfolder=unet or "
                "transformer in a pipeline folder)"
            ) from e
        if name not in self.CLASSES:
            raise ValueError(
                f"{self.option} loads {' or '.join(self.CLASSES)}, not {name} ({folder})"
            )
        kwargs = {"subfolder": subfolder} if subfolder else {}
        return getattr(_diffusers(self.option), name).from_pretrained(path, **kwargs)

    def _build(self, model_class: str | None, config: Mapping[str, Any]) -> nn.Module:
        """A randomly initialised `model_class` (default: the text-reading class with a text
        encoder, else the other) of DEFAULTS, the samples' sizes and `config`."""
        name = model_class or self.CLASSES[self.text_encoder is not None]
        if name not in self.CLASSES:
            raise ValueError(f"net.model_class={name}: use one of {', '.join(self.CLASSES)}")
        kwargs = {**self.DEFAULTS[name], **self.from_scratch(name), **_plain(config)}
        return getattr(_diffusers(self.option), name)(**kwargs)


class DiffusersUNet(DiffusersNet):
    """diffusers' UNet2DModel or UNet2DConditionModel (Stable Diffusion's UNet), which
    cross-attends to the text encoder's states at every position, as Stable Diffusion's
    pipelines pass them."""

    CLASSES = ("UNet2DModel", "UNet2DConditionModel")
    # Small nets for 32x32 images, to train from scratch.
    DEFAULTS = {
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
            # attention at 16x16 and 8x8, as captioned_digits' UNet (32x32 would cost 1024^2)
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "norm_num_groups": 8,
            "attention_head_dim": 8,
        },
    }

    def call(self, x, t, labels, text):
        kwargs = {"class_labels": labels} if self.num_classes else {}
        if text is not None:
            kwargs["encoder_hidden_states"] = text[0]  # every position, unmasked (SD)
        return self.model(x, t, **kwargs, return_dict=False)[0]

    def size_factor(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    def from_scratch(self, name):
        c, size = self._sample_shape[0], self._sample_shape[-1]
        kwargs: dict[str, Any] = {"sample_size": size, "in_channels": c, "out_channels": c}
        if self.num_classes:
            kwargs["num_class_embeds"] = self.num_classes + 1  # and the null class
        if name == "UNet2DConditionModel" and self.text_encoder is not None:
            kwargs["cross_attention_dim"] = self.text_encoder.dim
        return kwargs

    def check_pretrained(self) -> None:
        super().check_pretrained()
        config = self.model.config
        classes = config.get("num_class_embeds") or 0
        if self.num_classes and classes != self.num_classes + 1:
            raise ValueError(
                f"the pretrained UNet has {classes} class embeddings, so net.num_classes="
                f"{self.num_classes} (plus the null class) does not fit: set "
                f"net.num_classes={max(classes - 1, 0)}"
            )
        dim = config.get("cross_attention_dim")
        if self.text_encoder is not None and dim is not None and dim != self.text_encoder.dim:
            raise ValueError(
                f"the pretrained UNet cross-attends to states of width {dim}, the text encoder "
                f"gives {self.text_encoder.dim}: use the text encoder it was trained with "
                "(text_encoder.path)"
            )


class DiffusersTransformer(DiffusersNet):
    """diffusers' DiTTransformer2DModel (Peebles & Xie 2023: class labels through adaLN-Zero;
    unconditional with net.num_classes=0, where every label is the null class) or
    PixArtTransformer2DModel (Chen et al. 2024: prompts through cross-attention, with the text
    encoder's padding mask, as PixArt reads T5)."""

    CLASSES = ("DiTTransformer2DModel", "PixArtTransformer2DModel")
    option = "net=diffusers_transformer"
    # Small transformers for 32x32 images (2x2 patches), to train from scratch.
    DEFAULTS = {
        "DiTTransformer2DModel": {"num_attention_heads": 4, "attention_head_dim": 16,
                                  "num_layers": 4, "patch_size": 2},
        "PixArtTransformer2DModel": {"num_attention_heads": 4, "attention_head_dim": 16,
                                     "num_layers": 4, "patch_size": 2, "cross_attention_dim": 64,
                                     "use_additional_conditions": False},
    }  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for module in self.model.modules():  # label dropout is the conditioning's, seeded
            if type(module).__name__ == "LabelEmbedding":
                module.dropout_prob = 0.0

    def call(self, x, t, labels, text):
        if text is None:  # DiT: the class, or for an unconditional run its null class
            if not self.num_classes:
                labels = torch.full_like(labels, self.model.config.num_embeds_ada_norm)
            return self.model(x, timestep=t, class_labels=labels, return_dict=False)[0]
        states, mask = text
        extra = {"resolution": None, "aspect_ratio": None}
        return self.model(x, encoder_hidden_states=states, timestep=t, added_cond_kwargs=extra,
                          encoder_attention_mask=mask.to(x.dtype), return_dict=False)[0]  # fmt: skip

    def size_factor(self) -> int:
        return self.model.config.patch_size

    def from_scratch(self, name):
        c, size = self._sample_shape[0], self._sample_shape[-1]
        kwargs: dict[str, Any] = {"sample_size": size, "in_channels": c, "out_channels": c}
        if name == "DiTTransformer2DModel":
            kwargs["num_embeds_ada_norm"] = max(self.num_classes, 1)  # and the null class
        elif self.text_encoder is not None:
            kwargs["caption_channels"] = self.text_encoder.dim
        return kwargs

    def check_pretrained(self) -> None:
        super().check_pretrained()
        config = self.model.config
        if type(self.model).__name__ == "DiTTransformer2DModel":
            classes = config.num_embeds_ada_norm
            if self.num_classes not in (0, classes):
                raise ValueError(
                    f"the pretrained DiT has {classes} classes: set net.num_classes={classes}, "
                    "or 0 (unconditional: every label its null class)"
                )
        elif self.text_encoder is not None and config.caption_channels != self.text_encoder.dim:
            raise ValueError(
                f"the pretrained PixArt reads text states of width {config.caption_channels}, the "
                f"text encoder gives {self.text_encoder.dim}: use the text encoder it was trained "
                "with (T5 for PixArt)"
            )


def _plain(value: Any) -> Any:
    """Plain dicts and lists of a config's (OmegaConf's) mappings and sequences: what diffusers
    writes to its config.json."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _diffusers(option: str):
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(f"{option} needs diffusers: pip install -e '.[pretrained]'") from e
    return diffusers


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
