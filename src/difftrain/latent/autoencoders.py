"""Autoencoders for latent diffusion (Rombach et al. 2022): images to latents and back, frozen.

Each maps model-range images (B, C, H, W) to *scaled* latents (B, latent_channels, H/f, W/f),
about unit variance (the latents times `scaling_factor`, as Stable Diffusion scales them), and
back. The diffusion model trains on the latents; samples are decoded for grids, evaluation and
`difftrain-sample`.

- `TinyKL`, the network: a small KL autoencoder (f=4) that `difftrain-autoencoder` trains on a
  dataset, for CPU-sized work; `TinyAutoencoder` loads the file it writes.
- `DiffusersAutoencoder`: diffusers' AutoencoderKL (e.g. Stable Diffusion's VAE) from a folder
  or a hub name.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

log = logging.getLogger(__name__)


class _Block(nn.Module):
    """GroupNorm-SiLU-conv twice, with a skip (the LDM autoencoder's ResnetBlock)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(8, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class TinyKL(nn.Module):
    """A KL-regularized autoencoder with two 2x downsamplings (f=4): (C, H, W) images to a
    diagonal Gaussian over (latent_channels, H/4, W/4) latents, and latents back to images."""

    factor = 4

    def __init__(self, in_channels: int = 3, channels: int = 32, latent_channels: int = 4):
        super().__init__()
        c, c2 = channels, 2 * channels
        self.in_channels, self.channels, self.latent_channels = (
            in_channels,
            channels,
            latent_channels,
        )
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), _Block(c, c),
            nn.Conv2d(c, c, 3, stride=2, padding=1), _Block(c, c2),
            nn.Conv2d(c2, c2, 3, stride=2, padding=1), _Block(c2, c2),
            nn.GroupNorm(8, c2), nn.SiLU(), nn.Conv2d(c2, 2 * latent_channels, 3, padding=1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, c2, 3, padding=1), _Block(c2, c2),
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c2, c2, 3, padding=1),
            _Block(c2, c), nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1), _Block(c, c),
            nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1),
        )  # fmt: skip

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's mean and log-variance, each (B, latent_channels, H/4, W/4)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def loss(self, x: Tensor, kl_weight: float, generator: torch.Generator | None = None):
        """(total, reconstruction, KL) of a batch: L1 reconstruction of a posterior sample plus
        kl_weight x the KL divergence to N(0, I) per latent value (LDM's first-stage loss without
        its perceptual and adversarial terms)."""
        mean, logvar = self.encode(x)
        noise = torch.randn(mean.shape, device=x.device, generator=generator)
        recon = self.decode(mean + (0.5 * logvar).exp() * noise)
        rec = F.l1_loss(recon, x)
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
        return rec + kl_weight * kl, rec, kl


class TinyAutoencoder(nn.Module):
    """A `TinyKL` that `difftrain-autoencoder` trained, loaded from the file it wrote, frozen."""

    def __init__(self, path: str):
        super().__init__()
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"autoencoder=tiny: no autoencoder at {file}. Fix: train one first "
                f"(difftrain-autoencoder data=... out={file}) or set autoencoder.path"
            )
        saved = torch.load(file, map_location="cpu", weights_only=True)
        self.net = TinyKL(**saved["config"])
        self.net.load_state_dict(saved["state_dict"])
        self.net.eval().requires_grad_(False)
        self.scaling_factor = float(saved["scaling_factor"])
        self.latent_channels, self.factor = self.net.latent_channels, TinyKL.factor
        if short := saved.get("below_floor"):  # difftrain-autoencoder's check did not pass
            log.warning(
                "autoencoder %s: its reconstructions are below the floor (%s), which caps every "
                "prompt's alignment below what the real images allow. Fix: train it on "
                "(difftrain-autoencoder max_steps=...)", file, "; ".join(short),
            )  # fmt: skip
        self.digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]

    def fingerprint(self) -> str:
        return f"tiny-{self.digest}"

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self.net.encode(x)[0] * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.net.decode(z / self.scaling_factor)


class DiffusersAutoencoder(nn.Module):
    """diffusers' AutoencoderKL from a folder or a hub name (Stable Diffusion's VAE: f=8, 4
    channels, scaling factor 0.18215 from its config), frozen; images in [-1, 1]."""

    def __init__(self, path: str, subfolder: str | None = None):
        super().__init__()
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(
                path, **({"subfolder": subfolder} if subfolder else {})
            )
        except OSError as e:
            raise FileNotFoundError(
                f"autoencoder=kl could not load {path!r}: {e}. Fix: autoencoder.path=<a folder "
                "with config.json and the weights, as save_pretrained writes them (subfolder=vae "
                "inside a Stable Diffusion folder)>, or a hub name on a machine that reaches the hub"
            ) from e
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = vae.config.latent_channels
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.name = f"{path}/{subfolder or ''}"

    def fingerprint(self) -> str:
        checksum = sum(float(p.double().sum()) for p in self.vae.parameters())
        return "kl-" + hashlib.sha256(f"{self.name}:{checksum}".encode()).hexdigest()[:16]

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z / self.scaling_factor).sample
