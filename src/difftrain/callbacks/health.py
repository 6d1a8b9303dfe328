"""`TrainingHealth`: what training looks like from inside, logged as it runs and summarized at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from difftrain.callbacks.evaluate import Evaluate
from difftrain.callbacks.guard import Guard
from difftrain.health import log_slope

log = logging.getLogger(__name__)


class TrainingHealth(L.Callback):
    """Every `every_n_steps`: training loss per noise-level bucket (the validation buckets),
    gradient norm before clipping, parameter norm and update-to-weight ratio, as `health/*`.

    At the end of the run (also when it fails), a summary goes to `health.json` in `dirpath`,
    to the W&B run summary and to the log: the loss trend over the last `trend_fraction` of
    training, spikes, non-finite steps, rollbacks, the final gradient norm, whether val/loss is
    still improving, and the class coverage of the latest evaluation.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 50, trend_fraction: float = 0.2):
        self.dirpath, self.every_n_steps, self.trend_fraction = (
            Path(dirpath),
            every_n_steps,
            trend_fraction,
        )
        self.bucket_sum: torch.Tensor | None = None
        self.bucket_count: torch.Tensor | None = None
        self.loss_steps: list[int] = []
        self.losses: list[float] = []
        self.val_losses: list[float] = []
        self._before: torch.Tensor | None = None
        self.summary: dict[str, object] = {}

    def _due(self, trainer: L.Trainer) -> bool:
        return (trainer.global_step + 1) % self.every_n_steps == 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer
    ) -> None:
        if self._due(trainer):  # weights before the update, for the update-to-weight ratio
            self._before = torch.cat(
                [p.detach().flatten() for p in pl_module.denoiser.parameters()]
            ).clone()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        losses, sigma = pl_module.last_losses.float(), pl_module.last_sigma.float()
        edges = sigma.new_tensor(pl_module.val_sigma_edges)
        bucket = torch.bucketize(sigma, edges, right=True)
        finite = torch.isfinite(losses)
        sums = torch.zeros(len(edges) + 1, device=losses.device).index_add_(
            0, bucket[finite], losses[finite]
        )
        counts = torch.bincount(bucket[finite], minlength=len(edges) + 1).float()
        self.bucket_sum = sums if self.bucket_sum is None else self.bucket_sum + sums
        self.bucket_count = counts if self.bucket_count is None else self.bucket_count + counts
        mean = losses.mean().item()
        self.loss_steps.append(trainer.global_step)
        self.losses.append(mean)
        if not self._due(trainer):
            return

        names = [n.replace("val/", "health/train_") for n in pl_module.val_bucket_names]
        for name, total, count in zip(
            names, self.bucket_sum.tolist(), self.bucket_count.tolist(), strict=True
        ):
            if count:
                pl_module.log(name, total / count)
        self.bucket_sum = self.bucket_count = None
        params = torch.cat([p.detach().flatten() for p in pl_module.denoiser.parameters()])
        pl_module.log("health/grad_norm", pl_module.last_grad_norm)
        pl_module.log("health/param_norm", params.norm().item())
        if self._before is not None:
            ratio = (params - self._before).norm() / self._before.norm().clamp(min=1e-12)
            pl_module.log("health/update_ratio", ratio.item())
            self._before = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.val_losses.append(trainer.callback_metrics["val/loss"].item())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._summarize(trainer, pl_module, status="finished")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._summarize(
            trainer, pl_module, status=f"failed: {type(exception).__name__}: {exception}"
        )

    def _summarize(self, trainer: L.Trainer, pl_module: L.LightningModule, status: str) -> None:
        tail = max(2, int(len(self.losses) * self.trend_fraction))
        guard = next((cb for cb in trainer.callbacks if isinstance(cb, Guard)), None)
        evaluate = next((cb for cb in trainer.callbacks if isinstance(cb, Evaluate)), None)
        summary: dict[str, object] = {
            "status": status,
            "steps": trainer.global_step,
            "final_loss": self.losses[-1] if self.losses else float("nan"),
            "loss_trend_per_1k_steps": log_slope(self.loss_steps[-tail:], self.losses[-tail:]),
            "loss_spikes": guard.spike_steps if guard else None,
            "nonfinite_steps": pl_module.nonfinite_steps,
            "rollbacks": guard.rollbacks if guard else None,
            "rollback_events": guard.events if guard else [],
            "final_grad_norm": pl_module.last_grad_norm,
            "val_losses": self.val_losses,
            "val_loss_improving": len(self.val_losses) >= 2
            and self.val_losses[-1] < min(self.val_losses[:-1]),
        }
        if evaluate is not None and evaluate.last:
            keys = (
                "fid",
                "class_entropy",
                "classes_under_threshold",
                "precision",
                "recall",
                "modes_captured",
                "hq_share",
            )
            summary["latest_evaluation"] = {k: evaluate.last[k] for k in keys if k in evaluate.last}
        self.summary = summary
        if not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / "health.json").write_text(json.dumps(summary, indent=2, default=str))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                flat = {
                    f"health/{k}": v
                    for k, v in summary.items()
                    if isinstance(v, int | float | bool | str)
                }
                logger.experiment.summary.update(flat)
        log.info(
            "health: %s",
            json.dumps({k: v for k, v in summary.items() if k != "val_losses"}, default=str),
        )
