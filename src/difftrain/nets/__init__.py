"""Denoiser networks: raw nets F(x, c_noise, class_labels) that `diffusion.Denoiser` preconditions."""

from difftrain.nets.mlp import MLP
from difftrain.nets.unet import UNet

__all__ = ["MLP", "UNet"]
