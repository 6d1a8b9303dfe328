"""An MLP denoiser network for low-dimensional (toy) data."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from difftrain.nets.conditioning import add_labels, null_class
from difftrain.nets.layers import NoiseEmbedding
from difftrain.nets.protocol import Cond


class MLP(nn.Module):
    """F(x, c_noise, class_labels) -> (B, dim) for points x (B, dim): residual SiLU blocks,
    each told the noise level (and class) through an added embedding. Implements `nets.protocol.Net`.
    """

    augment_dim = 0  # points are not augmented

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        num_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.noise_emb = NoiseEmbedding(64, hidden)
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
            )
            for _ in range(depth)
        )
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def sample_shape(self) -> tuple[int]:
        return (self.dim,)

    def null_cond(self, cond: Cond) -> dict[str, Tensor]:
        return null_class(cond, self.num_classes)

    def check_shape(self, shape: Sequence[int]) -> None:
        if tuple(shape) != self.sample_shape:
            raise ValueError(
                f"the MLP draws {self.dim}-d points, not samples of shape {list(shape)}"
            )

    def forward(self, x: Tensor, c_noise: Tensor, *, class_labels: Tensor | None = None) -> Tensor:
        emb = self.noise_emb(c_noise.expand(x.shape[0]))
        emb = add_labels(emb, self.num_classes, self.class_emb, class_labels)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(F.silu(h + emb))
        return self.out(F.silu(h))
