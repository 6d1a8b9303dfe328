"""`Denoiser`: wraps a raw network with an objective's preconditioning (Karras et al. 2022, Eq. 7)."""

from __future__ import annotations

import torch
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

    def raw(
        self,
        x: Tensor,
        sigma: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        """The raw network output F for noisy x (B, C, H, W) at noise levels sigma (B,).

        augment_labels (B, D) describe a non-leaking augmentation of x; only training passes them.
        """
        _, _, c_in, c_noise = self.objective.scalings(sigma)
        extra = {} if augment_labels is None else {"augment_labels": augment_labels}
        return self.net(expand_like(c_in, x) * x, c_noise, class_labels, **extra)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The x0-estimate for noisy x (B, C, H, W); sigma is a scalar or shape (B,)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(x.dtype)
        c_skip, c_out, _, _ = self.objective.scalings(sigma)
        f = self.raw(x, sigma, class_labels)
        return expand_like(c_skip, x) * x + expand_like(c_out, x) * f.to(x.dtype)


class Ensemble(nn.Module):
    """Averages the x0-estimates of several denoisers at every sampling step.

    Members share the input and output spaces (x0-estimates in VE form), so they may differ in
    weights, seeds, EMA lengths or even objectives; `net` is the first member's network.
    """

    def __init__(self, members: list[Denoiser]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one denoiser")
        self.members = nn.ModuleList(members)

    @property
    def net(self) -> nn.Module:
        return self.members[0].net

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return torch.stack([member(x, sigma, class_labels) for member in self.members]).mean(0)
