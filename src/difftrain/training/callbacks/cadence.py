"""`EveryNValidations`: when a callback that samples after validation is due."""

from __future__ import annotations

import lightning as L


class EveryNValidations:
    """Counts finished validations (sanity checks excluded); `due` is true on every n-th."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {n}")
        self.n, self.count = n, 0

    def due(self, trainer: L.Trainer) -> bool:
        """Call once per validation end: whether this one is an n-th."""
        if trainer.sanity_checking:
            return False
        self.count += 1
        return self.count % self.n == 0
