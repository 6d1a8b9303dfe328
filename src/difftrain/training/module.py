"""`DiffusionModule`: the LightningModule that trains a denoiser and keeps an EMA of it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.generate import Diffusion, seeded_noise
from difftrain.diffusion.loss import DenoisingLoss, x0_error
from difftrain.diffusion.objectives import Objective, check_compatible
from difftrain.diffusion.samplers import Sampler
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.nets.protocol import Net
from difftrain.training.augment import AugmentPipe
from difftrain.training.ema import ema_model
from difftrain.training.health import bucket_names
from difftrain.training.optim import parameter_groups
from difftrain.training.report import StepReport

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class DiffusionModule(L.LightningModule):
    """Trains `Denoiser(net, objective)` with `loss` (noise levels and weighting injected).

    A training step: `loss` draws noise levels and noise and returns per-example losses; the
    update skips steps whose loss or gradient is not finite (weights and EMA both); the EMA then
    follows the update. Callbacks see the step as a `StepReport` (`outputs["report"]`).

    The EMA copy of the denoiser is what validation and sampling (`generate`) use. `val/loss` is
    the EDM-weighted x0 error (`diffusion.loss.x0_error`) at fixed log-uniform noise levels in
    `val_sigma_range` and fixed noise per example: comparable across epochs and across runs with
    other objectives, weightings or schedules. It is also logged per noise-level bucket (edges in
    `val_sigma_edges`). With a class-conditional net, labels are replaced by the null class with
    probability `label_dropout`, which classifier-free guidance needs.
    """

    def __init__(
        self,
        net: Net,
        schedule: NoiseSchedule,
        objective: Objective,
        sampler: Sampler,
        loss: DenoisingLoss,
        optimizer: OptimizerFactory,
        ema_decay: Callable[[int], float],
        lr_scheduler: SchedulerFactory | None = None,
        label_dropout: float = 0.0,
        val_sigma_range: Sequence[float] = (0.002, 80.0),
        val_sigma_edges: Sequence[float] = (0.1, 1.0, 10.0),
        val_seed: int = 0,
        augment: AugmentPipe | None = None,
    ):
        super().__init__()
        check_compatible(schedule, objective)
        sampler.check(schedule)
        if augment is not None and net.augment_dim != augment.label_dim:
            raise ValueError(
                f"augmentation labels have {augment.label_dim} values but net.augment_dim="
                f"{net.augment_dim}: set net.augment_dim={augment.label_dim} (augment=edm does)"
            )
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.denoiser = Denoiser(net, objective)
        self.ema = ema_model(self.denoiser, ema_decay)
        self.diffusion = Diffusion(self.ema.module, schedule, sampler)  # what sampling uses
        self.schedule, self.loss, self.augment = schedule, loss, augment
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.label_dropout = label_dropout
        self.val_sigma_range, self.val_seed = tuple(val_sigma_range), val_seed
        self.val_sigma_edges = sorted(val_sigma_edges)
        self.val_loss, self.val_loss_online = MeanMetric(), MeanMetric()
        buckets = len(bucket_names(self.val_sigma_edges, "val/loss"))
        self.val_bucket_loss = nn.ModuleList(MeanMetric() for _ in range(buckets))
        self.nonfinite_steps = 0
        self._report: StepReport | None = None

    def _cond(self, labels: Tensor, train: bool) -> dict[str, Tensor]:
        """The net's conditioning: class labels, in training replaced by the null class at random."""
        num_classes = self.denoiser.net.num_classes
        if not num_classes:
            return {}
        if train and self.label_dropout:
            drop = torch.rand(labels.shape, device=labels.device) < self.label_dropout
            labels = labels.masked_fill(drop, num_classes)
        return {"class_labels": labels}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, object]:
        x0, labels = batch
        cond = self._cond(labels, train=True)
        if self.augment is not None:  # non-leaking: the net is told how each image was augmented
            x0, cond["augment_labels"] = self.augment(x0)
        self.loss.noise_levels.set_step(self.global_step)
        losses, sigma = self.loss(self.denoiser, self.schedule, x0, cond)
        images = x0.shape[0] * self.trainer.world_size
        self._report = StepReport(losses.detach(), sigma.detach(), images)
        loss = losses.mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return {"loss": loss, "report": self._report}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure) -> None:
        """Update the weights, then the EMA; skip both when the loss or gradient is not finite."""
        loss = optimizer_closure()  # training_step and backward
        report = self._report
        grads = [p.grad for p in self.denoiser.parameters() if p.grad is not None]
        report.grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        report.skipped = (
            loss is None or not torch.isfinite(loss) or not math.isfinite(report.grad_norm.item())
        )
        if report.skipped:
            self.nonfinite_steps += 1
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()  # runs on_before_optimizer_step and gradient clipping, then the update
            self.ema.update_parameters(self.denoiser)
        report.parameters = {n: p.detach() for n, p in self.denoiser.named_parameters()}
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x0, labels = batch
        index = batch_idx * self.trainer.val_dataloaders.batch_size + torch.arange(x0.shape[0])
        sigma, noise = self._fixed_noise(index, x0.shape[1:])
        sigma, noise = sigma.to(x0), noise.to(x0)
        cond = self._cond(labels, train=False)
        losses = x0_error(self.ema.module, x0, sigma, noise, cond)
        self.val_loss.update(losses)
        self.val_loss_online.update(x0_error(self.denoiser, x0, sigma, noise, cond))
        bucket = torch.bucketize(sigma, sigma.new_tensor(self.val_sigma_edges), right=True)
        for b, metric in enumerate(self.val_bucket_loss):
            metric.update(losses, weight=(bucket == b).float())
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/loss_online", self.val_loss_online)

    def on_validation_epoch_end(self) -> None:
        gap = self.val_loss_online.compute() - self.val_loss.compute()
        self.log("val/ema_gap", gap)  # > 0: the EMA weights denoise better than the online ones
        names = bucket_names(self.val_sigma_edges, "val/loss")
        for name, metric in zip(names, self.val_bucket_loss, strict=True):
            value = metric.compute()
            if not value.isnan():
                self.log(name, value)
            metric.reset()

    def _fixed_noise(self, index: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
        """Noise level and noise of validation example i: the same in every epoch and run."""
        golden = (math.sqrt(5) - 1) / 2
        u = torch.frac(0.5 + index.double() * golden)  # low-discrepancy levels in [0, 1)
        lo, hi = (math.log(s) for s in self.val_sigma_range)
        return torch.exp(lo + u * (hi - lo)).float(), seeded_noise(self.val_seed, index, shape)

    def generate(self, n: int, sampler: Sampler | None = None, **options) -> tuple[Tensor, int]:
        """n samples of the EMA weights in the model's space (`Diffusion.generate`), and the NFE."""
        return self.diffusion.generate(n, sampler, **options)

    def check_sampler(self, sampler: Sampler) -> None:
        """Fail, saying why, when `sampler` cannot sample this run's schedule correctly."""
        sampler.check(self.diffusion.schedule)

    def check_resolution(self, size: int) -> None:
        """Fail, saying why, when the net cannot train on images of this size (a curriculum's)."""
        self.denoiser.net.check_image_size(size)

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(parameter_groups(self.denoiser))
        if self.lr_scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
