"""difftrain-autoencoder: train the tiny KL autoencoder that autoencoder=tiny loads.

    difftrain-autoencoder data=captioned_digits data.dataset.root=../shared/data [steps=1500]

Trains `TinyKL` (f=4) on the data's training images, reports the validation reconstruction
error, measures the scaling factor (1 / the std of the latents, as Stable Diffusion's) and
writes `out` (default autoencoders/<data>.pt), which `autoencoder=tiny autoencoder.path=...`
reads. On captioned_digits it also checks what the latents keep of each prompted attribute:
the alignment judge's accuracy on reconstructed validation images against its accuracy on the
images themselves, the most a latent model's prompt alignment can reach (a small L1 error can
still lose thin strokes' colour). Below `floor` after `steps`, it trains on in stretches of
`extra_steps` up to `max_steps`; still below, it saves the autoencoder marked so and fails with
the figures.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader

from difftrain.config import CONFIG_DIR
from difftrain.console import Progress
from difftrain.data.captioned import ATTRIBUTES, CaptionedImages
from difftrain.errors import ConfigError
from difftrain.evaluation.alignment import JUDGED, AttributeJudge
from difftrain.files import save_atomically
from difftrain.latent.autoencoders import TinyKL
from difftrain.runs.preflight import check_writable, exit_on_bad_input, raise_problems
from difftrain.runtime import resolve_device

log = logging.getLogger(__name__)


def train_autoencoder(cfg: DictConfig) -> dict[str, float]:
    """Train until the reconstructions pass the floor (or `max_steps`), measure and save; returns
    the validation L1 error, the scaling factor and the judge's check. An autoencoder still below
    the floor at `max_steps` is saved, marked so, and then refused with its figures (ConfigError)."""
    raise_problems(check_writable(out=Path(cfg.out).parent))
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    datamodule = instantiate(cfg.data, on_device=False)
    datamodule.setup("fit")
    loader = DataLoader(datamodule.train_set, cfg.batch_size, shuffle=True, drop_last=True)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    net = TinyKL(datamodule.channels, cfg.channels, cfg.latent_channels).to(device)
    start, done, stretch, lr = time.perf_counter(), 0, cfg.steps, cfg.lr
    judge = reconstruction_judge(cfg, datamodule)  # loaded once, the real images judged once
    while True:  # a cosine stretch, then the check; more stretches at half the rate until it passes
        _train(net, batches, stretch, lr, cfg.kl_weight, device, first=done)
        done += stretch
        check = judge(net) if judge is not None else {}
        short = below_floor(check, cfg.get("floor"))
        if not short or done >= cfg.max_steps:
            break
        stretch, lr = min(cfg.extra_steps, cfg.max_steps - done), lr / 2
        log.info("after %d steps the reconstructions are below the floor (%s): %d more steps at "
                 "lr %g", done, "; ".join(short), stretch, lr)  # fmt: skip
    error, scale = _validate(net, datamodule, device)
    config = {"in_channels": datamodule.channels, "channels": cfg.channels,
              "latent_channels": cfg.latent_channels}  # fmt: skip
    save_atomically({"config": config, "state_dict": net.cpu().state_dict(), "scaling_factor": scale,
                     "val_l1": error, "steps": done, "check": check, "below_floor": short},
                    cfg.out)  # fmt: skip
    log.info(
        "trained %d steps in %.1f min: validation L1 %.4f (images in [-1, 1]), scaling factor "
        "%.3f -> %s (autoencoder=tiny autoencoder.path=%s)",
        done, (time.perf_counter() - start) / 60, error, scale, cfg.out, cfg.out,
    )  # fmt: skip
    if short:
        raise ConfigError(
            f"the autoencoder's reconstructions are still below the floor after {done} steps: "
            f"{'; '.join(short)}. It is written to {cfg.out}, marked so (latent runs on it warn). "
            f"Fix: train longer (max_steps={2 * cfg.max_steps}), wider (channels="
            f"{cfg.channels * 3 // 2}), or with another seed; or lower the floor (floor.<attribute>=...)"
        )
    return {"val_l1": error, "scaling_factor": scale, "steps": done, **check}


def _train(
    net: TinyKL, batches, steps: int, lr: float, kl_weight: float, device, first: int
) -> None:
    """`steps` Adam steps at `lr` with cosine decay, logging the losses every 250 steps."""
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    progress = Progress("training the autoencoder", steps, "steps", quiet=True)
    for step, (x, _) in zip(range(first, first + steps), batches, strict=False):
        loss, rec, kl = net.loss(x.to(device), kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.update()  # every 10 s: the steps done and the time left
        if step % 250 == 0 or step == first + steps - 1:
            log.info("step %d: L1 %.4f, KL %.3f", step, rec.item(), kl.item())
    progress.close()


@torch.no_grad()
def _validate(net: TinyKL, datamodule, device) -> tuple[float, float]:
    """The validation L1 error of the reconstructions, and the scaling factor 1 / the latents' std."""
    net.eval()
    errors, latents = [], []
    for x, _ in DataLoader(datamodule.val_set, 256):
        mean, _ = net.encode(x.to(device))
        errors.append((net.decode(mean) - x.to(device)).abs().mean((1, 2, 3)))
        latents.append(mean)
    return torch.cat(errors).mean().item(), 1 / torch.cat(latents).std().item()


def below_floor(check: dict[str, float], floor: dict[str, float] | None) -> list[str]:
    """The attributes whose reconstructions the judge reads worse than `floor` x the real
    images, each as "digit 0.69 of the real 0.96 (< 0.9 x)"; none without a floor or a check."""
    short = []
    for attribute, share in (floor or {}).items():
        rebuilt, real = check.get(f"judged_{attribute}"), check.get(f"judged_real_{attribute}")
        if rebuilt is not None and real is not None and rebuilt < share * real:
            short.append(f"{attribute} {rebuilt:.3f} of the real {real:.3f} (< {share} x)")
    return short


def reconstruction_judge(
    cfg: DictConfig, datamodule
) -> Callable[[TinyKL], dict[str, float]] | None:
    """captioned_digits: a check of an autoencoder, the alignment judge's accuracy per attribute
    on its reconstructions of `judge_images` validation images and on the images themselves
    (`judged_real_*`, judged here once); None for other data or `judge_images=0`."""
    train, val = (s.dataset for s in (datamodule.train_set, datamodule.val_set))
    if not isinstance(train, CaptionedImages) or not cfg.judge_images:
        return None
    judge = AttributeJudge.load_or_train(
        train, val, cfg.paths.cache_dir, min_accuracy=cfg.judge_min_accuracy
    )
    images = val.images[: cfg.judge_images]
    asked = val.attributes[: len(images)][:, [ATTRIBUTES.index(a) for a in JUDGED]]

    def scores(name: str, x: Tensor) -> dict[str, float]:
        right = judge.predict(x) == asked
        return {f"{name}_{a}": right[:, i].float().mean().item() for i, a in enumerate(JUDGED)}

    real = scores("judged_real", images)

    @torch.no_grad()
    def check(net: TinyKL) -> dict[str, float]:
        net.eval()
        device = next(net.parameters()).device
        rebuilt = torch.cat([
            datamodule.to_uint8(net.decode(net.encode(datamodule.normalize(x.float() / 255).to(device))[0]).cpu())
            for x in images.split(256)
        ])  # fmt: skip
        result = scores("judged", rebuilt) | real
        log.info(
            "the alignment judge on %d reconstructed validation images (real images): %s -- the "
            "most a latent model's prompt alignment can reach",
            len(images),
            ", ".join(
                f"{a} {result[f'judged_{a}']:.3f} ({result[f'judged_real_{a}']:.3f})"
                for a in JUDGED
            ),
        )
        return result

    return check


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="autoencoder_train")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    train_autoencoder(cfg)


if __name__ == "__main__":
    main()
