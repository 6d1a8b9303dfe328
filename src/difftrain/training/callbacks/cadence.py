"""`EveryNValidations`: when a callback that samples after validation is due."""

from __future__ import annotations

import lightning as L

from difftrain.training.budget import time_budget


class EveryNValidations:
    """Counts finished validations (sanity checks excluded); `due` is true on every n-th, and on
    the last of training (at max_steps, or when a time budget is spent), so that the final
    metrics are the final weights'."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {n}")
        self.n, self.count = n, 0

    def due(self, trainer: L.Trainer) -> bool:
        """Call once per validation end: whether this one is an n-th."""
        if trainer.sanity_checking:
            return False
        self.count += 1
        timer = time_budget(trainer)
        last = 0 < trainer.max_steps <= trainer.global_step or (
            timer is not None and timer.time_remaining("train") <= 0
        )
        return self.count % self.n == 0 or last
