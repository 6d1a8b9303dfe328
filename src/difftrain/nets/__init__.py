"""Denoiser networks: raw nets F(x, c_noise, **cond) that `diffusion.denoiser.Denoiser` preconditions."""
