"""difftrain-autoencoder: train the tiny KL autoencoder that autoencoder=tiny loads.

    difftrain-autoencoder data=captioned_digits data.dataset.root=../shared/data [steps=1500]

Trains `TinyKL` (f=4) on the data's training images, reports the validation reconstruction
error, measures the scaling factor (1 / the std of the latents, as Stable Diffusion's) and
writes `out` (default autoencoders/<data>.pt), which `autoencoder=tiny autoencoder.path=...`
reads. On captioned_digits it also reports what the latents keep of each prompted attribute:
the alignment judge's accuracy on reconstructed validation images, the most a latent model's
prompt alignment can reach (a small L1 error can still lose thin strokes' colour).
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from difftrain.config import CONFIG_DIR
from difftrain.console import Progress
from difftrain.data.captioned import ATTRIBUTES, CaptionedImages
from difftrain.evaluation.alignment import JUDGED, AttributeJudge
from difftrain.files import save_atomically
from difftrain.latent.autoencoders import TinyKL
from difftrain.runs.preflight import check_writable, exit_on_bad_input, raise_problems
from difftrain.runtime import resolve_device

log = logging.getLogger(__name__)


def train_autoencoder(cfg: DictConfig) -> dict[str, float]:
    """Train, measure and save; returns the validation L1 error and the scaling factor."""
    raise_problems(check_writable(out=Path(cfg.out).parent))
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    datamodule = instantiate(cfg.data, on_device=False)
    datamodule.setup("fit")
    loader = DataLoader(datamodule.train_set, cfg.batch_size, shuffle=True, drop_last=True)
    net = TinyKL(datamodule.channels, cfg.channels, cfg.latent_channels).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.steps)
    start = time.perf_counter()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    progress = Progress("training the autoencoder", cfg.steps, "steps", quiet=True)
    for step, (x, _) in zip(range(cfg.steps), batches, strict=False):
        loss, rec, kl = net.loss(x.to(device), cfg.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.update()  # every 10 s: the steps done and the time left
        if step % 250 == 0 or step == cfg.steps - 1:
            log.info("step %d: L1 %.4f, KL %.3f", step, rec.item(), kl.item())
    progress.close()
    net.eval()
    val = DataLoader(datamodule.val_set, 256)
    with torch.no_grad():
        errors, latents = [], []
        for x, _ in val:
            mean, _ = net.encode(x.to(device))
            errors.append((net.decode(mean) - x.to(device)).abs().mean((1, 2, 3)))
            latents.append(mean)
    error, scale = torch.cat(errors).mean().item(), 1 / torch.cat(latents).std().item()
    config = {"in_channels": datamodule.channels, "channels": cfg.channels,
              "latent_channels": cfg.latent_channels}  # fmt: skip
    save_atomically({"config": config, "state_dict": net.cpu().state_dict(), "scaling_factor": scale,
                "val_l1": error, "steps": cfg.steps}, cfg.out)  # fmt: skip
    log.info(
        "trained %d steps in %.1f min: validation L1 %.4f (images in [-1, 1]), scaling factor "
        "%.3f -> %s (autoencoder=tiny autoencoder.path=%s)",
        cfg.steps, (time.perf_counter() - start) / 60, error, scale, cfg.out, cfg.out,
    )  # fmt: skip
    return {"val_l1": error, "scaling_factor": scale, **judge_reconstructions(cfg, datamodule, net)}


def judge_reconstructions(cfg: DictConfig, datamodule, net: TinyKL) -> dict[str, float]:
    """captioned_digits: the alignment judge's accuracy per attribute on the reconstructions of
    `judge_images` validation images, and on the images themselves (`judged_real_*`)."""
    train, val = (s.dataset for s in (datamodule.train_set, datamodule.val_set))
    if not isinstance(train, CaptionedImages) or not cfg.judge_images:
        return {}
    judge = AttributeJudge.load_or_train(
        train, val, cfg.paths.cache_dir, min_accuracy=cfg.judge_min_accuracy
    )
    images = val.images[: cfg.judge_images]
    asked = val.attributes[: len(images)][:, [ATTRIBUTES.index(a) for a in JUDGED]]
    net = net.cpu()
    with torch.no_grad():
        rebuilt = torch.cat([
            datamodule.to_uint8(net.decode(net.encode(datamodule.normalize(x.float() / 255))[0]))
            for x in images.split(256)
        ]).permute(0, 3, 1, 2)  # fmt: skip
    result = {}
    for name, x in (("judged", rebuilt), ("judged_real", images)):
        right = judge.predict(x) == asked
        result |= {f"{name}_{a}": right[:, i].float().mean().item() for i, a in enumerate(JUDGED)}
    log.info(
        "the alignment judge on %d reconstructed validation images (real images): %s -- the "
        "most a latent model's prompt alignment can reach",
        len(images),
        ", ".join(
            f"{a} {result[f'judged_{a}']:.3f} ({result[f'judged_real_{a}']:.3f})" for a in JUDGED
        ),
    )
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="autoencoder_train")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    train_autoencoder(cfg)


if __name__ == "__main__":
    main()
