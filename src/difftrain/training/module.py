"""`DiffusionModule`: the LightningModule that trains a denoiser and keeps an EMA of it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.generate import (
    Diffusion,
    golden_points,
    seeded_generator,
    seeded_noise,
)
from difftrain.diffusion.loss import WHOLE, DenoisingLoss, Share, x0_error
from difftrain.diffusion.objectives import Objective, check_compatible
from difftrain.diffusion.samplers import Sampler
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.nets.protocol import Net
from difftrain.runtime import shared_seed
from difftrain.text.tokenizer import PAD
from difftrain.training.augment import AugmentPipe
from difftrain.training.budget import ScheduleClock, go_to_step, time_budget
from difftrain.training.clusters import Clusters
from difftrain.training.distributed import is_sharded
from difftrain.training.ema import EMA
from difftrain.training.health import bucket_names
from difftrain.training.optim import RETUNED_ON_RESUME, parameter_groups, retune, skip_update
from difftrain.training.report import StepReport, logs_this_step

log = logging.getLogger(__name__)
OptimizerFactory = Callable[..., torch.optim.Optimizer]
TRAINING_STREAM = 2**30  # the step generators' seeds, apart from sampling's (diffusion.generate)
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class DiffusionModule(L.LightningModule):
    """Trains `Denoiser(net, objective)` with `loss` (noise levels and weighting injected).

    A training step: `loss` draws noise levels and noise and returns per-example losses; the
    update skips steps whose loss or gradient is not finite (weights and EMA both, decided on the
    device and agreed by every process); the EMA then follows the update. Callbacks see the step
    as a `StepReport` (`outputs["report"]`).

    Every random choice of step s (noise levels, noise, label dropout, augmentation) comes from a
    generator seeded by (`seed`, s), drawn for the global batch, of which each process keeps its
    share: the run is the same for any number of processes, and resumes exactly.

    The EMA copy of the denoiser is what validation and sampling (`generate`) use. `val/loss` is
    the EDM-weighted x0 error (`diffusion.loss.x0_error`) at fixed log-uniform noise levels in
    `val_sigma_range` and fixed noise per example: comparable across epochs and across runs with
    other objectives, weightings or schedules. It is also logged per noise-level bucket (edges in
    `val_sigma_edges`). With a class-conditional net, labels are replaced by the null class with
    probability `label_dropout`, which classifier-free guidance needs; with a net that reads text
    (the batch's labels are then caption token rows), captions by the empty caption.

    With `compile` (True, or a torch.compile mode such as "max-autotune-no-cudagraphs"), the
    trained net's forward is compiled; the EMA copy, which samples, is not.

    With an `autoencoder` (latent diffusion), batches are its latents and samples are decoded.

    With `clusters` (cluster conditioning, `training.clusters`), the class-conditional net is
    conditioned on each example's k-means cluster instead of its label, the clusters fitted to
    the training data when training starts; unconditional samples draw clusters by their share.

    Step-based schedules (the LR schedule, the EMA decay, noise-level and resolution curricula)
    read `schedule_step()`: the global step, or under a time budget (`trainer.max_time`) the
    share of it spent times `schedule_steps` (see `training.budget`).
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
        seed: int | None = None,
        compile: bool | str = False,
        schedule_steps: int = 0,
        autoencoder: nn.Module | None = None,
        clusters: Clusters | None = None,
    ):
        super().__init__()
        check_compatible(schedule, objective)
        if clusters is not None and net.num_classes != clusters.k:
            raise ValueError(
                f"model.clusters.k={clusters.k} clusters condition a net with as many classes, "
                f"but net.num_classes={net.num_classes}: set net.num_classes={clusters.k}"
            )
        sampler.check(schedule)
        if augment is not None and net.augment_dim != augment.label_dim:
            raise ValueError(
                f"augmentation labels have {augment.label_dim} values but net.augment_dim="
                f"{net.augment_dim}: set net.augment_dim={augment.label_dim} (augment=edm does)"
            )
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.denoiser = Denoiser(net, objective)
        self.ema = EMA(self.denoiser, ema_decay)
        if compile:  # the trained net only, in place (the same weights and state_dict keys)
            mode = None if compile is True else compile
            self.denoiser.net.compile(mode=mode, dynamic=False)
        self.schedule, self.sampler, self.loss, self.augment = schedule, sampler, loss, augment
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.label_dropout = label_dropout
        self.val_sigma_range, self.val_seed = tuple(val_sigma_range), val_seed
        self.val_sigma_edges = sorted(val_sigma_edges)
        self.val_loss, self.val_loss_online = MeanMetric(), MeanMetric()
        buckets = len(bucket_names(self.val_sigma_edges, "val/loss"))
        self.val_bucket_loss = nn.ModuleList(MeanMetric() for _ in range(buckets))
        self.seed = seed  # of every training step's draws; None: drawn at random when fitting
        self.register_buffer("nonfinite_steps", torch.tensor(0), persistent=False)
        self.clock = ScheduleClock(horizon=schedule_steps)
        # Frozen and rebuilt from the config on loading: not a submodule, so no checkpoint or
        # EMA carries its weights; it follows the module's device when sampling.
        self.__dict__["autoencoder"] = autoencoder
        self.clusters = clusters  # a submodule: the checkpoint carries the fitted clusters
        self._report: StepReport | None = None

    @property
    def diffusion(self) -> Diffusion:
        """The EMA weights with the schedule and the run's sampler: what sampling uses. Built on
        each use: a strategy may have wrapped `ema.module` since (FSDP)."""
        decoder = None
        if self.autoencoder is not None:
            decoder = self.autoencoder.to(self.device).decode
        prior = self.clusters.prior if self.clusters is not None else None
        return Diffusion(self.ema.module, self.schedule, self.sampler, decoder, prior)

    def setup(self, stage: str) -> None:
        self.seed = shared_seed(self.seed, self.trainer.strategy)  # all processes draw alike
        self.clock.every = self.trainer.log_every_n_steps
        if time_budget(self.trainer) is not None and self.clock.horizon < 1:
            raise ValueError(
                "trainer.max_time needs trainer.max_steps >= 1: the steps the schedules are "
                "written for, which the time budget stretches or shrinks"
            )

    def on_fit_start(self) -> None:
        """The net takes what the data serves (latents with an autoencoder); a frozen text
        encoder (text_encoder=clip) reads the data's captions once, here; so do the clusters
        (model.clusters) their examples, unless the run resumes with them."""
        served = getattr(self.trainer.datamodule, "sample_shape", None)
        net_shape = tuple(self.denoiser.net.sample_shape)
        if served is not None and tuple(served) != net_shape:
            what = "latents" if self.autoencoder is not None else "images"
            raise ValueError(
                f"the data serves {what} of shape {tuple(served)} but the net takes {net_shape}: "
                f"set net.in_channels={served[0]} net.image_size={served[-1]}"
            )
        encoder = getattr(self.denoiser.net, "text_encoder", None)
        caption_rows = getattr(self.trainer.datamodule, "caption_rows", None)  # captioned data
        rows = caption_rows() if caption_rows is not None else None
        if hasattr(encoder, "precompute") and rows is not None:
            encoder.precompute(rows)
            self.ema.module.net.text_encoder.share_table(encoder)
        if self.clusters is not None and not self.clusters.fitted:
            self._fit_clusters()

    def _fit_clusters(self) -> None:
        examples = getattr(self.trainer.datamodule, "examples", None)
        if examples is None:
            raise ValueError(
                "model.clusters fits its clusters to the data's images, and this data module "
                f"({type(self.trainer.datamodule).__name__}) serves none: drop model.clusters"
            )
        labels = self.clusters.fit(examples(self.clusters.examples))
        sizes = torch.bincount(labels, minlength=self.clusters.k)
        log.info(
            "cluster conditioning: %d k-means clusters of %d training examples, %d to %d each",
            self.clusters.k,
            len(labels),
            sizes.min(),
            sizes.max(),
        )

    def schedule_step(self) -> int:
        """The step that step-based schedules read: the global step, or under a time budget
        `schedule_steps` x the share of the budget spent."""
        return self.clock.step_at(self.trainer)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.clock.read(self.trainer)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if 0 < self.trainer.max_steps <= self.global_step:  # the last step: validate it too
            self.trainer.should_stop = True  # Lightning validates a step that asks to stop

    def _cond(
        self, labels: Tensor, generator: torch.Generator | None = None, share: Share = WHOLE
    ) -> dict[str, Tensor]:
        """The net's conditioning: class labels, or the captions' token rows (B, L) for a net that
        reads text; in training (a generator) replaced at random by the null class or the empty
        caption, which classifier-free guidance needs."""
        net = self.denoiser.net
        text = getattr(net, "tokenizer", None) is not None
        if not net.num_classes and not text:
            return {}
        if generator is not None and self.label_dropout:
            n = len(labels) * share.world
            drop = share.of(torch.rand(n, device=labels.device, generator=generator))
            drop = drop < self.label_dropout
            if text:
                labels = labels.masked_fill(drop[:, None], PAD)  # the empty caption
            else:
                labels = labels.masked_fill(drop, net.num_classes)
        return {"text_tokens": labels} if text else {"class_labels": labels}

    def step_generator(self) -> torch.Generator:
        """The generator of this training step's draws, seeded by (seed, global step)."""
        return seeded_generator(self.seed or 0, TRAINING_STREAM + self.global_step, self.device)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, object]:
        x0, labels = batch
        if self.clusters is not None:
            labels = self.clusters(x0)
        generator = self.step_generator()
        share = Share(self.global_rank, self.trainer.world_size)
        cond = self._cond(labels, generator, share)
        if self.augment is not None:  # non-leaking: the net is told how each image was augmented
            x0, cond["augment_labels"] = self.augment(x0, generator, share)
        self.loss.noise_levels.set_step(self.schedule_step())
        gather = (lambda t: self.all_gather(t).flatten(0, 1)) if share.world > 1 else None
        losses, sigma = self.loss(self.denoiser, self.schedule, x0, cond, generator, share, gather)
        loss = losses.mean()
        mean = self.trainer.strategy.reduce(loss.detach(), reduce_op="mean")  # every process's
        images, logs = len(x0) * share.world, logs_this_step(self.trainer)
        self._report = StepReport(losses.detach(), sigma.detach(), images, mean, logs=logs)
        if logs:  # only then: logging a value makes the host wait for the device
            self.log("train/loss", mean)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return {"loss": loss, "report": self._report}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure) -> None:
        """Update the weights, then the EMA; skip both when the loss or the gradient is not finite
        on any process. Decided on the device: the host never waits for it."""
        loss = optimizer_closure()  # training_step and backward
        report = self._report
        grads = [p.grad for p in self.denoiser.parameters() if p.grad is not None]
        square = torch.stack(torch._foreach_norm(grads)).square().sum()
        if is_sharded(self.trainer.strategy):  # each process holds a part of every gradient
            square = self.trainer.strategy.reduce(square, reduce_op="sum")
        report.grad_norm = square.sqrt()
        bad = ~torch.isfinite(report.grad_norm)
        if loss is not None:
            bad |= ~torch.isfinite(loss.detach())
        bad = self.trainer.strategy.reduce(bad.float(), reduce_op="max") > 0  # agreed by all
        report.skipped = bad
        self.nonfinite_steps += bad.long()
        skip_update(optimizer, bad)  # runs on_before_optimizer_step and clipping, then the update
        if time_budget(self.trainer) is None:
            self.ema.update(self.denoiser, skip=bad)
        else:  # the decay at the schedule step, once per schedule step this update stands for
            count, rate = self.clock.at(self.trainer)
            self.ema.update(self.denoiser, skip=bad, count=max(count, 1.0), per_update=rate)
        report.parameters = {n: p.detach() for n, p in self.denoiser.named_parameters()}
        if report.logs:
            self.log("train/nonfinite_steps", self.nonfinite_steps.float())

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if time_budget(self.trainer) is None:
            scheduler.step()
        else:  # where the schedule is at the next step, by the clock
            go_to_step(scheduler, self.clock.step_at(self.trainer, self.global_step))

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip by the norm that `optimizer_step` measured: no second pass over the gradients, and
        no host sync. Not Lightning's clipping, which under bf16-mixed refuses fused optimizers
        although without loss scaling there is nothing to unscale (fp16, which scales, is refused
        before the run starts). With sharded weights (FSDP), FSDP's clip over every part."""
        if not gradient_clip_val:
            return
        if is_sharded(self.trainer.strategy):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(
                    f"trainer=fsdp clips by norm only, not {gradient_clip_algorithm!r}"
                )
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        grads = [p.grad for p in self.denoiser.parameters() if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch._foreach_clamp_min_(grads, -gradient_clip_val)
            torch._foreach_clamp_max_(grads, gradient_clip_val)
        else:  # grad * min(1, max_norm / norm), as torch.nn.utils.clip_grad_norm_
            scale = (gradient_clip_val / (self._report.grad_norm + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, scale)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x0, labels = batch
        index = batch_idx * self.trainer.val_dataloaders.batch_size + torch.arange(x0.shape[0])
        sigma, noise = self._fixed_noise(index, x0.shape[1:])
        sigma, noise = sigma.to(x0), noise.to(x0)
        cond = self._cond(labels if self.clusters is None else self.clusters(x0))
        losses = x0_error(self.ema.module, x0, sigma, noise, cond)
        self.val_loss.update(losses)
        self.val_loss_online.update(x0_error(self.denoiser, x0, sigma, noise, cond))
        bucket = torch.bucketize(sigma, sigma.new_tensor(self.val_sigma_edges), right=True)
        for b, metric in enumerate(self.val_bucket_loss):
            metric.update(losses, weight=(bucket == b).float())
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/loss_online", self.val_loss_online)

    def on_validation_epoch_end(self) -> None:
        # Computed from metrics that every process has synced already: the same everywhere.
        gap = self.val_loss_online.compute() - self.val_loss.compute()
        self.log("val/ema_gap", gap, sync_dist=True)  # > 0: the EMA weights denoise better
        names = bucket_names(self.val_sigma_edges, "val/loss")
        for name, metric in zip(names, self.val_bucket_loss, strict=True):
            value = metric.compute()
            if not value.isnan():
                self.log(name, value, sync_dist=True)
            metric.reset()

    def _fixed_noise(self, index: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
        """Noise level and noise of validation example i: the same in every epoch and run."""
        u = golden_points(index)  # low-discrepancy levels in [0, 1)
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

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resumed with other optimizer or LR-schedule settings than the checkpoint was trained
        with (`ckpt_path=... optimizer.lr=...`): they take effect from the resumed step on."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
        config = self.hparams.get("config") or {}
        if not config or all(saved.get(k) == config.get(k) for k in RETUNED_ON_RESUME):
            return  # the same settings: the states resume as saved (exactly)
        built = self.configure_optimizers()
        same_kind = saved.get("optimizer", {}).get("_target_") == config["optimizer"]["_target_"]
        scheduler = built.get("lr_scheduler", {}).get("scheduler")
        changes = retune(checkpoint, built["optimizer"], scheduler, keep_moments=same_kind)
        log.info("the optimizer resumes with the config's settings: %s", ", ".join(changes))

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(parameter_groups(self.denoiser))
        if self.lr_scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
