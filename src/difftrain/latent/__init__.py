"""Latent diffusion: autoencoders that map images to latents and back."""
