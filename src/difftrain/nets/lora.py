"""`LoRA`: low-rank adapters (Hu et al. 2022) on a diffusers net, with peft, as diffusers'
train_text_to_image_lora.py adds them: only the adapters train; the pretrained weights stay as
`net.path` holds them, so checkpoints keep the adapters alone (`adapter_only`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

ADAPTER = "lora_"  # what peft's adapter weights are named by


@dataclass(frozen=True)
class LoRA:
    """Adapters of `rank` on the layers named `target_modules` (Stable Diffusion's attention
    projections by default), scaled by alpha / rank; their B starts at zero, so the adapted net
    starts as the pretrained one."""

    rank: int = 4
    alpha: float = 4.0
    target_modules: Sequence[str] = field(default=("to_q", "to_k", "to_v", "to_out.0"))
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(
                f"model.lora.rank={self.rank}, alpha={self.alpha}: need rank >= 1 and alpha > 0"
            )

    def config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, target_modules=list(self.target_modules),
            lora_dropout=self.dropout, init_lora_weights="gaussian",
        )  # fmt: skip

    def apply(self, net: nn.Module) -> None:
        """Freeze `net` and add the adapters to its diffusers model, which alone then train."""
        model = getattr(net, "model", None)
        if not hasattr(model, "add_adapter"):
            raise ValueError(
                f"model.lora adapts a diffusers net (net=diffusers_unet), not {type(net).__name__}"
            )
        net.requires_grad_(False)
        try:
            model.add_adapter(self.config())
        except ValueError as e:  # peft: no layer of these names
            raise ValueError(
                f"model.lora.target_modules={list(self.target_modules)}: {e}. Fix: name layers of "
                "the net, e.g. [to_q,to_k,to_v,to_out.0] (attention) or [conv1,conv2]"
            ) from None


def frozen_names(denoiser: nn.Module) -> set[str]:
    """The names of `denoiser`'s parameters that do not train (the pretrained ones)."""
    return {n for n, p in denoiser.named_parameters() if not p.requires_grad}


def fingerprint(denoiser: nn.Module, names: set[str]) -> str:
    """A checksum of the frozen weights: a checkpoint of adapters names the weights under them."""
    state = denoiser.state_dict()
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(f"{name}:{float(state[name].double().sum()):.10e}".encode())
    return digest.hexdigest()[:16]


def adapters_only(
    state: Mapping[str, Tensor], frozen: set[str], prefixes: Sequence[str]
) -> dict[str, Tensor]:
    """`state` without the `frozen` (pretrained) weights under any of `prefixes` (the trained
    denoiser's and its EMA's): what a LoRA run's checkpoint keeps."""
    drop = {prefix + name for name in frozen for prefix in prefixes}
    return {k: v for k, v in state.items() if k not in drop}


def restore_frozen(
    state: dict[str, Tensor],
    denoiser: nn.Module,
    expected: str,
    prefixes: Sequence[str],
    source: str,
) -> None:
    """Put `denoiser`'s frozen weights (as net.path loaded them) into an adapters-only `state`
    under each of `prefixes`, so that it loads strictly; fail where they are not the weights the
    adapters were trained on (`expected`, their fingerprint)."""
    names = frozen_names(denoiser)
    if fingerprint(denoiser, names) != expected:
        raise ValueError(
            f"{source} holds LoRA adapters trained on other pretrained weights than net.path holds "
            "now: point net.path at the model they were trained on"
        )
    current = denoiser.state_dict()
    for name in names:
        for prefix in prefixes:
            state.setdefault(prefix + name, current[name])


def diffusers_layers(model: nn.Module) -> dict[str, Tensor]:
    """The adapters of a diffusers model in diffusers' LoRA format (`save_lora_weights`)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


@torch.no_grad()
def adapter_metadata(model: nn.Module) -> dict:
    """peft's config of the adapters (rank, alpha, targets), which diffusers stores beside them."""
    return model.peft_config["default"].to_dict()
