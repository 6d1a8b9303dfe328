"""difftrain: train diffusion models stably."""
