"""`Denoiser`: wraps a raw network with an objective's preconditioning (Karras et al. 2022, Eq. 7)."""

from __future__ import annotations

from torch import Tensor, nn

from difftrain.diffusion.objectives import Objective, expand_like


class Denoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise): an x0-estimate whatever the objective.

    `net(x, c_noise, class_labels)` is any network mapping (B, C, H, W) to (B, C, H, W).
    """

    def __init__(self, net: nn.Module, objective: Objective):
        super().__init__()
        self.net = net
        self.objective = objective

    def raw(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The raw network output F for noisy x (B, C, H, W) at noise levels sigma (B,)."""
        _, _, c_in, c_noise = self.objective.scalings(sigma)
        return self.net(expand_like(c_in, x) * x, c_noise, class_labels)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The x0-estimate for noisy x (B, C, H, W); sigma is a scalar or shape (B,)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(x.dtype)
        c_skip, c_out, _, _ = self.objective.scalings(sigma)
        f = self.raw(x, sigma, class_labels)
        return expand_like(c_skip, x) * x + expand_like(c_out, x) * f.to(x.dtype)
