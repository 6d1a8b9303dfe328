"""`TrainingHealth`: what training looks like from inside, logged as it runs and summarized at the end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from difftrain.training.health import bucket_names, log_slope
from difftrain.training.report import StepReport, logs_this_step


def _flat(parameters: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in parameters])


class TrainingHealth(L.Callback):
    """On logging steps at least `every_n_steps` apart: training loss per noise-level bucket (cut at `sigma_edges`, the
    validation buckets), gradient norm before clipping, parameter norm and update-to-weight
    ratio, as `health/*`.

    Its end-of-run summary (health.json, the W&B run summary, the log): the loss trend over the
    last `trend_fraction` of training, non-finite steps, the final gradient norm, whether
    val/loss is still improving and, under DDP, how far the processes' states differ
    (`ranks_differ_by`, from checksums of every tensor: 0 when they hold identical bits).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        trend_fraction: float = 0.2,
        sigma_edges: Sequence[float] = (0.1, 1.0, 10.0),
    ):
        if every_n_steps < 1 or not 0 < trend_fraction <= 1:
            raise ValueError("health needs every_n_steps >= 1 and trend_fraction in (0, 1]")
        self.every_n_steps, self.trend_fraction = every_n_steps, trend_fraction
        self.sigma_edges = sorted(sigma_edges)
        self.bucket_names = bucket_names(self.sigma_edges, "health/train_loss")
        self.bucket_sum: torch.Tensor | None = None
        self.bucket_count: torch.Tensor | None = None
        self.loss_steps: list[int] = []
        self.losses: list[float] = []
        self.val_losses: list[float] = []
        self.nonfinite_steps: int | torch.Tensor = 0
        self.last_grad_norm: torch.Tensor | None = None
        self.ranks_differ_by: float | None = None  # DDP: largest difference of state checksums
        self._before: torch.Tensor | None = None
        self.pending: list[tuple[int, torch.Tensor]] = []  # losses not yet read on the host
        self._edges: torch.Tensor | None = None  # sigma_edges on the training device
        self.due, self.next_due = False, 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        # Statistics are read on the host on logging steps only: the others never wait.
        self.due = logs_this_step(trainer) and trainer.global_step >= self.next_due
        if self.due:
            self.next_due = trainer.global_step + self.every_n_steps

    @staticmethod
    def _trained(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer
    ) -> None:
        if self.due:  # weights before the update, for the update-to-weight ratio
            self._before = _flat(self._trained(optimizer)).clone()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        report: StepReport = outputs["report"]
        self.nonfinite_steps = self.nonfinite_steps + report.skipped
        self.last_grad_norm = report.grad_norm
        losses, sigma = report.losses.float(), report.sigma.float()
        if self._edges is None or self._edges.device != sigma.device:  # copied once, not per step
            self._edges = sigma.new_tensor(self.sigma_edges)
        bucket = torch.bucketize(sigma, self._edges, right=True)
        finite = torch.isfinite(losses)
        n = len(self.sigma_edges) + 1
        sums = torch.zeros(n, device=losses.device).index_add_(
            0, bucket, torch.where(finite, losses, 0.0)
        )
        counts = torch.zeros(n, device=losses.device).index_add_(0, bucket, finite.float())
        self.bucket_sum = sums if self.bucket_sum is None else self.bucket_sum + sums
        self.bucket_count = counts if self.bucket_count is None else self.bucket_count + counts
        self.pending.append((trainer.global_step, report.loss))
        if report.logs:
            self._read_losses()
        if not self.due:
            return

        if self.sigma_edges:  # summed over the processes' examples
            totals = trainer.strategy.reduce(self.bucket_sum, reduce_op="sum").tolist()
            counts = trainer.strategy.reduce(self.bucket_count, reduce_op="sum").tolist()
            for name, total, count in zip(self.bucket_names, totals, counts, strict=True):
                if count:
                    pl_module.log(name, total / count)
        self.bucket_sum = self.bucket_count = None
        pl_module.log("health/grad_norm", report.grad_norm)
        pl_module.log("health/param_norm", _flat(list(report.parameters.values())).norm().item())
        if self._before is not None:
            after = _flat(self._trained(trainer.optimizers[0]))
            ratio = (after - self._before).norm() / self._before.norm().clamp(min=1e-12)
            pl_module.log("health/update_ratio", ratio.item())
            self._before = None

    def _read_losses(self) -> None:
        if self.pending:
            self.loss_steps += [step for step, _ in self.pending]
            self.losses += torch.stack([loss.float() for _, loss in self.pending]).tolist()
            self.pending.clear()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Under DDP: do the processes hold the same state (weights, EMA, noise-level statistics)?"""
        self._read_losses()
        if trainer.world_size == 1:
            return
        state = [t for t in pl_module.state_dict().values() if t.is_floating_point()]
        sums = torch.stack(
            [torch.stack([t.double().sum(), t.double().square().sum()]) for t in state]
        )
        everyone = trainer.strategy.all_gather(sums)  # (processes, tensors, 2)
        self.ranks_differ_by = (everyone - everyone[0]).abs().max().item()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.val_losses.append(trainer.callback_metrics["val/loss"].item())

    def summary(self) -> dict[str, Any]:
        self._read_losses()
        tail = max(2, int(len(self.losses) * self.trend_fraction))
        return {
            "health": {
                "final_loss": self.losses[-1] if self.losses else float("nan"),
                "loss_trend_per_1k_steps": log_slope(self.loss_steps[-tail:], self.losses[-tail:]),
                "nonfinite_steps": int(self.nonfinite_steps),
                "final_grad_norm": float("nan")
                if self.last_grad_norm is None
                else self.last_grad_norm.item(),
                "val_losses": self.val_losses,
                "val_loss_improving": len(self.val_losses) >= 2
                and self.val_losses[-1] < min(self.val_losses[:-1]),
                **(
                    {}
                    if self.ranks_differ_by is None
                    else {"ranks_differ_by": self.ranks_differ_by}
                ),
            }
        }
