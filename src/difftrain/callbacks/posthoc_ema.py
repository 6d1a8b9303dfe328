"""`PostHocEMA`: keep two power-function EMA profiles and snapshot them for `difftrain-phema`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from difftrain.phema import sigma_rel_to_gamma


class PostHocEMA(L.Callback):
    """Tracks one power-function EMA of the denoiser per sigma_rel (Karras et al. 2024, Eq. 1 and 127)
    and writes all of them to `dirpath/phema-<step>.pt` every `snapshot_every` steps.

    `difftrain-phema run_dir=... sigma_rel=...` then reconstructs an EMA of any length from them.
    """

    def __init__(
        self, dirpath: str, sigma_rels: Sequence[float] = (0.05, 0.10), snapshot_every: int = 500
    ):
        self.dirpath, self.sigma_rels, self.snapshot_every = (
            Path(dirpath),
            list(sigma_rels),
            snapshot_every,
        )
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.emas: list[list[torch.Tensor]] = []
        self.updates = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.emas:  # fresh (not restored from a checkpoint)
            params = [p.detach().clone() for p in pl_module.denoiser.parameters()]
            self.emas = [[p.clone() for p in params] for _ in self.sigma_rels]
        else:
            self.emas = [[p.to(pl_module.device) for p in ema] for ema in self.emas]

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if pl_module.step_skipped:
            return
        self.updates += 1
        params = [p.detach() for p in pl_module.denoiser.parameters()]
        for gamma, ema in zip(self.gammas, self.emas, strict=True):
            beta = (1 - 1 / self.updates) ** (gamma + 1)
            torch._foreach_lerp_(ema, params, 1 - beta)
        if trainer.global_step % self.snapshot_every == 0 and trainer.is_global_zero:
            self._save(pl_module, trainer.global_step)

    def _save(self, pl_module: L.LightningModule, step: int) -> None:
        names = [name for name, _ in pl_module.denoiser.named_parameters()]
        profiles = [
            {n: p.detach().cpu().clone() for n, p in zip(names, ema, strict=True)}
            for ema in self.emas
        ]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"step": self.updates, "sigma_rels": self.sigma_rels, "profiles": profiles},
            self.dirpath / f"phema-{step:07d}.pt",
        )

    def state_dict(self) -> dict:
        return {"updates": self.updates, "emas": [[p.cpu() for p in ema] for ema in self.emas]}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.emas = state["updates"], state["emas"]

    @torch.no_grad()
    def rollback_to(self, state: dict, step: int) -> None:
        """Called by `Guard` when it restores the weights of `step`: the profiles go back with them,
        and snapshots written since then (averaging weights that were thrown away) are deleted."""
        self.updates = state["updates"]
        for ema, saved in zip(self.emas, state["emas"], strict=True):
            for p, s in zip(ema, saved, strict=True):
                p.copy_(s)
        for path in self.dirpath.glob("phema-*.pt"):
            if int(path.stem.split("-")[1]) > step:
                path.unlink()
