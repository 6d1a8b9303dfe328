"""A trained run as a diffusers pipeline folder, which `DiffusionPipeline.from_pretrained` loads.

The Stable Diffusion layout is written: a run of net=diffusers_unet (UNet2DConditionModel) in
the latent space of autoencoder=kl, reading prompts with text_encoder=clip, becomes a
StableDiffusionPipeline of the EMA UNet, the VAE, CLIP and its tokenizer, and an
EulerDiscreteScheduler whose config says the run's schedule and objective
(`diffusion.scheduler_config`). With the same initial noise, steps and guidance it draws what
difftrain-sample draws with sampler=euler.

A run of difftrain's own nets (UNet, DiT, MLP) in pixel space is written as a custom pipeline,
`runs.pipeline.DifftrainPipeline` (why: see there), which `DifftrainPipeline.from_pretrained(DIR)`
loads and which samples with the run's own sampler, drawing what difftrain-sample draws.

A LoRA run (model.lora) is written as its EMA adapters alone, in diffusers' LoRA format
(pytorch_lora_weights.safetensors, with peft's config), which `pipeline.load_lora_weights(DIR)`
puts onto the pipeline of the pretrained model (net.path).
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from difftrain.data.media import Images
from difftrain.diffusion.scheduler_config import scheduler_config
from difftrain.errors import ConfigError
from difftrain.nets.diffusers import DiffusersNet
from difftrain.runs.pretrained import TrainedModel, load_trained

LAYOUT = (
    "difftrain-export writes Stable Diffusion's layout: a run of net=diffusers_unet "
    "(UNet2DConditionModel) on the latents of autoencoder=kl with text_encoder=clip"
)


def export(ckpt: str | Path, out: str | Path) -> Path:
    """Write checkpoint `ckpt`'s EMA model as a diffusers pipeline folder `out`; returns it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    model = load_trained(ckpt)
    if model.config.model.get("lora") is not None:
        return export_lora(model, out)
    if not isinstance(model.diffusion.denoiser.net, DiffusersNet):
        return export_custom(model, out)
    unet, text_encoder, vae = components(model)
    cfg, objective = model.config, model.diffusion.denoiser.objective.name
    spacing = OmegaConf.select(cfg, "sampler.spacing", default="karras")
    try:
        config = scheduler_config(OmegaConf.to_container(cfg.schedule), objective, spacing)
    except ValueError as e:
        raise ConfigError(f"cannot export {ckpt}: {e}") from e
    tokenizer = text_encoder.clip_tokenizer
    tokenizer.model_max_length = text_encoder.clip_max_length  # what the states were read at
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder.model, tokenizer=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipeline.save_pretrained(out, safe_serialization=True)
    return Path(out)


def components(model: TrainedModel):
    """The run's diffusers UNet, CLIP text encoder and AutoencoderKL; a ConfigError naming what
    is missing where the run does not have Stable Diffusion's layout."""
    from difftrain.latent.autoencoders import DiffusersAutoencoder
    from difftrain.nets.diffusers import DiffusersUNet
    from difftrain.text.clip import ClipTextEncoder

    net = model.diffusion.denoiser.net
    if not isinstance(net, DiffusersUNet) or not net.conditional:
        raise ConfigError(f"{LAYOUT}; this run's net is {model.config.net._target_}")
    if not isinstance(net.text_encoder, ClipTextEncoder):
        raise ConfigError(
            f"{LAYOUT}; this run reads prompts with {type(net.text_encoder).__name__}"
        )
    autoencoder = model.config.get("autoencoder")
    if autoencoder is None:
        raise ConfigError(f"{LAYOUT}; this run trains in pixel space")
    vae = instantiate(autoencoder)
    if not isinstance(vae, DiffusersAutoencoder):
        raise ConfigError(f"{LAYOUT}; this run's autoencoder is {type(vae).__name__}")
    return net.model, net.text_encoder, vae.vae


def export_lora(model: TrainedModel, out: str | Path) -> Path:
    """A LoRA run's EMA adapters in diffusers' LoRA format, under `out`."""
    from diffusers import StableDiffusionPipeline

    from difftrain.nets.lora import adapter_metadata, diffusers_layers

    net = model.diffusion.denoiser.net
    if not getattr(net, "conditional", False):
        raise ConfigError(
            "diffusers loads LoRA adapters into its text-to-image pipelines: a UNet2DConditionModel"
        )
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=diffusers_layers(net.model),
        unet_lora_adapter_metadata=adapter_metadata(net.model), safe_serialization=True,
    )  # fmt: skip
    return Path(out)


def export_custom(model: TrainedModel, out: str | Path) -> Path:
    """A run of difftrain's own nets on images as a `DifftrainPipeline` folder under `out`."""
    from difftrain.runs.pipeline import DifftrainNet, DifftrainPipeline

    cfg = model.config
    if cfg.get("autoencoder") is not None or type(model.media) is not Images:
        raise ConfigError(
            "difftrain-export writes difftrain's own nets for images in pixel space; this run "
            + ("trains in an autoencoder's latent space" if cfg.get("autoencoder") is not None
               else f"draws {type(model.media).__name__.lower()}")
        )  # fmt: skip
    run = {key: OmegaConf.to_container(cfg[key], resolve=True)
           for key in ("net", "objective", "schedule", "sampler")}  # fmt: skip
    run["data"] = {"value_range": list(cfg.data.value_range)}
    net = DifftrainNet(run)
    net.denoiser.load_state_dict(model.diffusion.denoiser.state_dict())
    DifftrainPipeline(net).save_pretrained(out)
    return Path(out)
