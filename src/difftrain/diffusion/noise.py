"""Noise models: the distribution of the noise n in x = x0 + sigma n, in training and sampling."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

# A noise model maps independent standard-normal draws z (B, *shape) to the noise n the diffusion
# uses; training, validation and every sampler apply the denoiser's (`Denoiser.noise`).
NoiseModel = Callable[[Tensor], Tensor]


def independent(z: Tensor) -> Tensor:
    """Independent standard-normal noise: the draws as they are (every run's default)."""
    return z


class MixedFrameNoise:
    """Noise shared in part by a clip's frames: each frame's noise is standard normal, and any two
    frames' noise has correlation `correlation` at every position (the mixed noise prior of PYoCo,
    Ge et al. 2023, Eq. 4: correlation alpha^2 / (1 + alpha^2)).

    An image net run on each frame denoises correlated frames alike, so a video net inflated
    from it (`model.init_from`) starts from clips whose frames agree instead of unrelated images.
    The probability-flow ODE keeps its form for any fixed noise covariance (dx/dsigma =
    (x - D(x; sigma)) / sigma), so every deterministic sampler works unchanged; stochastic ones
    draw their fresh noise from this model too.

    It is a linear map of independent standard-normal noise (so the seeded draws stay as they
    are): n = sqrt(1 - rho) (z - mean_T z) + sqrt(1 - rho + rho T) mean_T z over the frame axis.
    """

    def __init__(self, correlation: float = 0.5):
        if not 0 <= correlation < 1:
            raise ValueError(
                f"model.noise.correlation must be in [0, 1) (0: independent frames), got {correlation}"
            )
        self.correlation = float(correlation)

    def __call__(self, z: Tensor) -> Tensor:
        """Correlated noise from independent standard-normal z (B, C, T, H, W)."""
        if z.ndim != 5:
            raise ValueError(
                "model.noise=MixedFrameNoise shares noise across the frames of clips (B, C, T, "
                f"H, W), but the samples have shape {tuple(z.shape)}: drop model.noise for images"
            )
        frames, rho = z.shape[2], self.correlation
        mean = z.mean(2, keepdim=True)
        return (1 - rho) ** 0.5 * (z - mean) + (1 - rho + rho * frames) ** 0.5 * mean

    def __repr__(self) -> str:
        return f"MixedFrameNoise(correlation={self.correlation})"
