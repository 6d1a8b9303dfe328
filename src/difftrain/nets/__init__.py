"""Denoiser networks: raw nets F(x, c_noise, class_labels) that `diffusion.Denoiser` preconditions."""

from difftrain.nets.unet import UNet

__all__ = ["UNet"]
