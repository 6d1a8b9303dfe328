"""difftrain-sample: draw images from a checkpoint's EMA weights into an npz (and a PNG grid).

difftrain-sample ckpt=logs/train/runs/<run>/checkpoints/last.ckpt n=1000 out=samples.npz
difftrain-sample ckpt=... sampler=ddim sampler.steps=20 seed=1
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from difftrain.checkpoint import load_trained
from difftrain.config import CONFIG_DIR
from difftrain.data import to_uint8
from difftrain.diffusion.generate import generate
from difftrain.images import save_grid, save_npz


def sample(cfg: DictConfig) -> Path:
    """Write cfg.n samples as uint8 (N, H, W, C) under `images` in cfg.out, plus a grid PNG beside it."""
    device = torch.device(
        cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    model = load_trained(cfg.ckpt, device)
    sampler = instantiate(cfg.sampler) if cfg.get("sampler") else model.sampler
    images, nfe = generate(
        model.denoiser,
        model.schedule,
        sampler,
        model.shape,
        cfg.n,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        device=device,
    )
    uint8 = to_uint8(images, model.config.data.value_range)
    out = save_npz(
        uint8, cfg.out, nfe=np.array(nfe), seed=np.array(cfg.seed), step=np.array(model.global_step)
    )
    grid = save_grid(uint8[: cfg.grid_size], Path(cfg.out).with_suffix(".png"))
    print(f"wrote {cfg.n} samples ({sampler.steps} steps, NFE {nfe}) to {out} and a grid to {grid}")
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
