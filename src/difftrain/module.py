"""`DiffusionModule`: the LightningModule that trains a denoiser and keeps an EMA of it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from difftrain.augment import AugmentPipe
from difftrain.diffusion import (
    Denoiser,
    DenoisingLoss,
    NoiseSchedule,
    Objective,
    Sampler,
    check_compatible,
    x0_error,
)
from difftrain.diffusion.generate import generate, seeded_generator
from difftrain.ema import ema_model
from difftrain.optim import parameter_groups

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class DiffusionModule(L.LightningModule):
    """Trains `Denoiser(net, objective)` with `loss` (noise levels and weighting injected).

    The EMA copy of the denoiser (`self.ema.module`) is what validation and sampling use.
    `val/loss` is the EDM-weighted x0 error (`diffusion.x0_error`) at fixed log-uniform noise
    levels in `val_sigma_range` and fixed noise per example: comparable across epochs and across
    runs with other objectives, weightings or schedules. It is also logged per noise-level bucket
    (edges in `val_sigma_edges`). With a class-conditional net, labels are replaced by the null
    class with probability `label_dropout`, which classifier-free guidance needs.

    A step whose loss or gradient is not finite updates neither the weights nor the EMA; it is
    counted in `nonfinite_steps`. `fault_nan_steps` makes the loss NaN at those global steps.
    """

    def __init__(
        self,
        net: nn.Module,
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
        fault_nan_steps: Sequence[int] = (),
        augment: AugmentPipe | None = None,
    ):
        super().__init__()
        check_compatible(schedule, objective)
        sampler.check(schedule)
        if augment is not None and getattr(net, "augment_dim", 0) != augment.label_dim:
            raise ValueError(
                f"augmentation labels have {augment.label_dim} values but net.augment_dim="
                f"{getattr(net, 'augment_dim', 0)}: set net.augment_dim={augment.label_dim} (augment=edm does)"
            )
        self.augment = augment
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.denoiser = Denoiser(net, objective)
        self.ema = ema_model(self.denoiser, ema_decay)
        self.schedule, self.sampler, self.loss = schedule, sampler, loss
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.label_dropout = label_dropout
        self.val_sigma_range, self.val_seed = tuple(val_sigma_range), val_seed
        self.val_sigma_edges = sorted(val_sigma_edges)
        self.val_bucket_names = _bucket_names(self.val_sigma_edges)
        self.val_loss, self.val_loss_online = MeanMetric(), MeanMetric()
        self.fault_nan_steps = set(fault_nan_steps)
        self.nonfinite_steps, self.step_skipped, self.last_grad_norm = 0, False, 0.0
        self.train_resolution: int | None = None  # set by callbacks.ResolutionCurriculum
        self.last_losses: Tensor | None = None
        self.last_sigma: Tensor | None = None
        self.val_bucket_loss = nn.ModuleList(MeanMetric() for _ in self.val_bucket_names)

    @property
    def num_classes(self) -> int:
        return getattr(self.denoiser.net, "num_classes", 0)

    def _labels(self, labels: Tensor, train: bool) -> Tensor | None:
        """Labels for the net: None when unconditional; randomly the null class during training."""
        if not self.num_classes:
            return None
        if train and self.label_dropout:
            drop = torch.rand(labels.shape, device=labels.device) < self.label_dropout
            labels = labels.masked_fill(drop, self.num_classes)
        return labels

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, labels = batch
        if self.train_resolution and self.train_resolution < x0.shape[-1]:  # resolution curriculum
            x0 = F.interpolate(x0, size=self.train_resolution, mode="area")
        augment_labels = None
        if self.augment is not None:  # non-leaking: the net is told how each image was augmented
            x0, augment_labels = self.augment(x0)
        self.loss.noise_levels.set_step(self.global_step)
        class_labels = self._labels(labels, train=True)
        losses, sigma = self.loss(self.denoiser, self.schedule, x0, class_labels, augment_labels)
        if self.global_step in self.fault_nan_steps:  # fault injection, to exercise the guards
            losses = losses * float("nan")
        self.last_losses, self.last_sigma = losses.detach(), sigma.detach()
        loss = losses.mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure) -> None:
        """Skip the update (weights and EMA) when the loss or the gradient is not finite."""
        loss = optimizer_closure()  # training_step and backward
        grads = [p.grad for p in self.denoiser.parameters() if p.grad is not None]
        self.last_grad_norm = torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(grads))
        ).item()
        self.step_skipped = (
            loss is None or not torch.isfinite(loss) or not math.isfinite(self.last_grad_norm)
        )
        if self.step_skipped:
            self.nonfinite_steps += 1
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()  # runs on_before_optimizer_step and gradient clipping, then the update
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if not self.step_skipped:
            self.ema.update_parameters(self.denoiser)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x0, labels = batch
        index = batch_idx * self.trainer.val_dataloaders.batch_size + torch.arange(x0.shape[0])
        sigma, noise = self._fixed_noise(index, x0.shape[1:])
        sigma, noise = sigma.to(x0), noise.to(x0)
        labels = self._labels(labels, train=False)
        losses = x0_error(self.ema.module, x0, sigma, noise, labels)
        self.val_loss.update(losses)
        self.val_loss_online.update(x0_error(self.denoiser, x0, sigma, noise, labels))
        bucket = torch.bucketize(sigma, sigma.new_tensor(self.val_sigma_edges), right=True)
        for b, metric in enumerate(self.val_bucket_loss):
            metric.update(losses, weight=(bucket == b).float())
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/loss_online", self.val_loss_online)

    def on_validation_epoch_end(self) -> None:
        gap = self.val_loss_online.compute() - self.val_loss.compute()
        self.log("val/ema_gap", gap)  # > 0: the EMA weights denoise better than the online ones
        for name, metric in zip(self.val_bucket_names, self.val_bucket_loss, strict=True):
            value = metric.compute()
            if not value.isnan():
                self.log(name, value)
            metric.reset()

    def _fixed_noise(self, index: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
        """Noise level and noise of validation example i: the same in every epoch and run."""
        golden = (math.sqrt(5) - 1) / 2
        u = torch.frac(0.5 + index.double() * golden)  # low-discrepancy levels in [0, 1)
        lo, hi = (math.log(s) for s in self.val_sigma_range)
        noise = torch.stack(
            [torch.randn(shape, generator=seeded_generator(self.val_seed, int(i))) for i in index]
        )
        return torch.exp(lo + u * (hi - lo)).float(), noise

    @torch.no_grad()
    def sample(
        self,
        n: int,
        seed: int = 0,
        class_labels: Tensor | None = None,
        guidance: float = 1.0,
        batch_size: int = 256,
    ) -> tuple[Tensor, int]:
        """n images (n, C, H, W) from the EMA denoiser in the model's value range, and the NFE.

        A class-conditional model without class_labels draws classes 0, 1, 2, ... in turn.
        """
        shape = self.denoiser.net.sample_shape
        if self.num_classes and class_labels is None:
            class_labels = torch.arange(n) % self.num_classes
        return generate(
            self.ema.module,
            self.schedule,
            self.sampler,
            shape,
            n,
            seed=seed,
            batch_size=batch_size,
            device=self.device,
            class_labels=class_labels,
            guidance=guidance,
            null_label=self.num_classes,
        )

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(parameter_groups(self.denoiser))
        if self.lr_scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _bucket_names(edges: Sequence[float]) -> list[str]:
    """Metric names for the noise-level buckets cut by `edges`, e.g. val/loss_sigma_0.1-1."""
    if not edges:
        return []
    b = [f"{e:g}" for e in edges]
    middle = [f"val/loss_sigma_{lo}-{hi}" for lo, hi in itertools.pairwise(b)]
    return [f"val/loss_sigma_lt{b[0]}", *middle, f"val/loss_sigma_ge{b[-1]}"]
