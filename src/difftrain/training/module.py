"""`DiffusionModule`: the LightningModule that trains a denoiser and keeps an EMA of it."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from difftrain.diffusion.consistency import (
    ConsistencyDistillationLoss,
    ConsistencyLoss,
    ConsistencyObjective,
)
from difftrain.diffusion.denoiser import Denoiser
from difftrain.diffusion.generate import Diffusion
from difftrain.diffusion.loss import DenoisingLoss
from difftrain.diffusion.noise import NoiseModel
from difftrain.diffusion.objectives import Objective, check_compatible
from difftrain.diffusion.samplers import Sampler
from difftrain.diffusion.schedules import NoiseSchedule
from difftrain.nets.lora import LoRA, adapters_only, fingerprint, frozen_names, restore_frozen
from difftrain.nets.protocol import Net, check_served
from difftrain.nets.temporal import inflate
from difftrain.runtime import shared_seed
from difftrain.streams import TRAINING_STREAM, Share, seeded_generator
from difftrain.training.augment import AugmentPipe
from difftrain.training.budget import ScheduleClock, go_to_step, time_budget
from difftrain.training.clusters import Clusters
from difftrain.training.conditioners import Conditioning, GivenFrames, conditioning_for
from difftrain.training.ema import EMA
from difftrain.training.optim import (
    clip_gradients,
    grad_norm,
    parameter_groups,
    resume_with,
    skip_update,
)
from difftrain.training.prior import PriorPreservation
from difftrain.training.report import StepReport, logs_this_step
from difftrain.training.validation import FixedValidation

log = logging.getLogger(__name__)
PREFIXES = ("denoiser.", "ema.module.")  # the trained denoiser's and its EMA's state_dict keys
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class DiffusionModule(L.LightningModule):
    """Trains `Denoiser(net, objective)` with `loss` (noise levels and weighting injected).

    A training step: `loss` draws noise levels and noise and returns per-example losses; the
    update skips steps whose loss or gradient is not finite (weights and EMA both, decided on the
    device and agreed by every process); the EMA then follows. Callbacks see the step as a
    `StepReport` (`outputs["report"]`). Its every random draw (noise levels, noise, label dropout,
    augmentation) comes from a generator seeded by (`seed`, step), drawn for the global batch, of
    which each process keeps its share: the same run for any number of processes, and resumes.

    The EMA copy of the denoiser is what validation (`training.validation`: val/loss at fixed
    noise levels in `val_sigma_range` and fixed noise) and sampling (`generate`) use.

    `conditioning` (`training.conditioners`) turns each batch into the net's conditioning, with
    the null entries classifier-free guidance needs at rate `label_dropout`; by default the one the
    net reads: class labels, captions, or with `clusters` each example's k-means cluster; for a
    video net that reads given frames (`net.given_frames`), a clip's frames besides, given as
    `given_modes` draw them (prediction, interpolation; `training.conditioners.GivenFrames`).

    With `init_from` (an image run's checkpoint), a video net starts from that run's EMA weights
    in its spatial layers (`nets.temporal.inflate`): at first it is the image net frame by frame.
    With `freeze_init` those weights stay as loaded and only the new (temporal) layers train, as
    AnimateDiff trains its motion module (Guo et al. 2024). With `noise` (`diffusion.noise`, e.g.
    noise shared in part by a clip's frames) the noise of training and sampling is that model's.

    With `lora` (a diffusers net), low-rank adapters are added to the net and alone train; the
    EMA and the checkpoints then hold the adapters alone (`nets.lora`), which a resume or
    `load_trained` puts back onto the pretrained weights net.path loads.

    With `prior_preservation` (DreamBooth), the base model draws images of a class prompt when
    fitting starts, and every step mixes as many of them into the batch, their loss weighted.

    With `boundary_sigma` the denoiser is a consistency model's f, `objective`'s preconditioning
    with the boundary condition f(x, boundary_sigma) = x (`diffusion.consistency`; distill=ect);
    with loss=cd (distill=cd) a frozen copy of the `init_from` weights is the teacher.

    With `compile` (True, or a torch.compile mode such as "max-autotune-no-cudagraphs"), the
    trained net's forward is compiled; the EMA copy, which samples, is not. With an `autoencoder`
    (latent diffusion), batches are its latents and samples are decoded.

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
        conditioning: Conditioning | None = None,
        init_from: str | None = None,
        freeze_init: bool = False,
        given_modes: Sequence[str] = GivenFrames.MODES,
        boundary_sigma: float | None = None,
        lora: LoRA | None = None,
        prior_preservation: PriorPreservation | None = None,
        noise: NoiseModel | None = None,
    ):
        super().__init__()
        check_compatible(schedule, objective)
        if isinstance(loss, ConsistencyLoss) and (boundary_sigma is None or not init_from):
            raise ValueError(
                "loss=ect or cd makes a trained model a consistency model: give "
                "model.init_from=<the teacher's checkpoint> and model.boundary_sigma (distill=ect "
                "and distill=cd set it), with the teacher's own settings (its experiment)"
            )
        teacher_objective = objective
        if boundary_sigma is not None:  # a consistency model: f(x, boundary_sigma) = x
            objective = ConsistencyObjective(objective, boundary_sigma)
        if freeze_init and not init_from:
            raise ValueError(
                "model.freeze_init=true keeps the weights model.init_from loads: give "
                "model.init_from=<an image run's checkpoint>, or set model.freeze_init=false"
            )
        if init_from:  # before the EMA copies the net: both start from these weights
            loaded = load_image_net(net, init_from)
            for name, param in net.named_parameters():
                if freeze_init and name in loaded:  # only the new (temporal) layers learn
                    param.requires_grad_(False)
            if isinstance(loss, ConsistencyDistillationLoss):  # the frozen teacher, as loaded
                loss.set_teacher(Denoiser(copy.deepcopy(net), teacher_objective, noise))
        if lora is not None:  # before the EMA copies the net: only the adapters train
            lora.apply(net)
        self.conditioning = conditioning or conditioning_for(
            net, label_dropout, clusters, given_modes
        )
        sampler.check(schedule)
        if augment is not None and net.augment_dim != augment.label_dim:
            raise ValueError(
                f"augmentation labels have {augment.label_dim} values but net.augment_dim="
                f"{net.augment_dim}: set net.augment_dim={augment.label_dim} (augment=edm does)"
            )
        if noise is not None:  # refused now, naming the fix, where the samples cannot take it
            noise(torch.zeros(1, *net.sample_shape))
        self.denoiser = Denoiser(net, objective, noise)
        self.ema = EMA(self.denoiser, ema_decay)
        # A LoRA run's checkpoints keep the adapters alone: the rest is net.path's, as loaded.
        self.frozen = frozen_names(self.denoiser) if lora is not None else set()
        if compile:  # the trained net only, in place (the same weights and state_dict keys)
            mode = None if compile is True else compile
            self.denoiser.net.compile(mode=mode, dynamic=False)
        self.schedule, self.sampler, self.loss, self.augment = schedule, sampler, loss, augment
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.validation = FixedValidation(val_sigma_range, val_sigma_edges, val_seed)
        self.seed = seed  # of every training step's draws; None: drawn at random when fitting
        self.register_buffer("nonfinite_steps", torch.tensor(0), persistent=False)
        self.clock = ScheduleClock(horizon=schedule_steps)
        # Frozen and rebuilt from the config on loading: not a submodule, so no checkpoint or
        # EMA carries its weights; it follows the module's device when sampling.
        self.__dict__["autoencoder"] = autoencoder
        self.clusters = clusters  # a submodule: the checkpoint carries the fitted clusters
        self.prior = prior_preservation  # a submodule: the checkpoint carries its class images
        self._report: StepReport | None = None

    @property
    def diffusion(self) -> Diffusion:
        """The EMA weights with the schedule and the run's sampler: what sampling uses. Built on
        each use: a strategy may have wrapped `ema.module` since (FSDP)."""
        decoder = None if self.autoencoder is None else self.autoencoder.to(self.device).decode
        prior = self.conditioning.prior  # classes drawn by their shares (clusters), else in turn
        return Diffusion(self.ema.module, self.schedule, self.sampler, decoder, prior)

    def setup(self, stage: str) -> None:
        self.seed = shared_seed(self.seed, self.trainer.strategy)  # all processes draw alike
        self.clock.start(self.trainer)

    def on_fit_start(self) -> None:
        """The net takes what the data serves (latents with an autoencoder); the conditioning
        reads what it needs of the data once (captions, the examples clusters are fitted to)."""
        check_served(self.denoiser.net, self.trainer.datamodule)
        denoisers = [self.denoiser, self.ema.module]
        if (teacher := getattr(self.loss, "teacher", None)) is not None:  # distill=cd's
            denoisers.append(teacher.to(self.device))
        self.conditioning.setup(self.trainer.datamodule, denoisers)
        if self.prior is not None:  # DreamBooth: the base model's class images, drawn once
            self.prior.setup(Diffusion(self.ema.module, self.schedule, self.sampler), denoisers)

    def schedule_step(self) -> int:
        """The step that step-based schedules read: the global step, or under a time budget
        `schedule_steps` x the share of the budget spent."""
        return self.clock.step_at(self.trainer)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.clock.read(self.trainer)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if 0 < self.trainer.max_steps <= self.global_step:  # the last step: validate it too
            self.trainer.should_stop = True  # Lightning validates a step that asks to stop

    def step_generator(self) -> torch.Generator:
        """The generator of this training step's draws, seeded by (seed, global step)."""
        return seeded_generator(self.seed or 0, TRAINING_STREAM + self.global_step, self.device)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, object]:
        x0, labels = batch
        generator = self.step_generator()
        share = Share(self.global_rank, self.trainer.world_size)
        cond = self.conditioning(x0, labels, generator, share)
        weights = None
        if self.prior is not None:  # DreamBooth: as many class images, their loss weighted
            x0, cond, weights = self.prior.mix(x0, cond, generator, share)
        if self.augment is not None:  # non-leaking: the net is told how each image was augmented
            x0, cond["augment_labels"] = self.augment(x0, generator, share)
        self.loss.set_step(self.schedule_step())
        gather = (lambda t: self.all_gather(t).flatten(0, 1)) if share.world > 1 else None
        losses, sigma = self.loss(self.denoiser, self.schedule, x0, cond, generator, share, gather)
        if weights is not None:
            losses = losses * weights
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
        report.grad_norm = grad_norm(self.denoiser, self.trainer.strategy)
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
        report.parameters = {  # post-hoc EMA, health: of a LoRA run, the adapters
            n: p.detach() for n, p in self.denoiser.named_parameters()
            if p.requires_grad or not self.frozen
        }  # fmt: skip
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
        """Clip by the norm that `optimizer_step` measured (`training.optim.clip_gradients`)."""
        clip_gradients(
            self.denoiser, self.trainer.strategy, self._report.grad_norm, gradient_clip_val,
            gradient_clip_algorithm,
        )  # fmt: skip

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x0, labels = batch
        index = batch_idx * self.trainer.val_dataloaders.batch_size + torch.arange(x0.shape[0])
        cond = self.conditioning(x0, labels)
        self.validation.update(self.ema.module, self.denoiser, x0, cond, index)
        self.log("val/loss", self.validation.loss, prog_bar=True)
        self.log("val/loss_online", self.validation.loss_online)

    def on_validation_epoch_end(self) -> None:
        for name, value in self.validation.epoch_end().items():  # alike on every process
            self.log(name, value, sync_dist=True)

    def generate(self, n: int, sampler: Sampler | None = None, **options) -> tuple[Tensor, int]:
        """n samples of the EMA weights in the model's space (`Diffusion.generate`), and the NFE."""
        return self.diffusion.generate(n, sampler, **options)

    def check_sampler(self, sampler: Sampler) -> None:
        """Fail, saying why, when `sampler` cannot sample this run's schedule correctly."""
        sampler.check(self.diffusion.schedule)

    def check_shape(self, shape: Sequence[int]) -> None:
        """Fail, saying why, when the net cannot train on samples of this shape (a curriculum's)."""
        self.denoiser.net.check_shape(shape)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """A LoRA run's checkpoint keeps its adapters (and their EMA) alone, and a checksum of
        the pretrained weights under them."""
        if self.frozen:
            checkpoint["state_dict"] = adapters_only(
                checkpoint["state_dict"], self.frozen, PREFIXES
            )
            checkpoint["pretrained"] = fingerprint(self.denoiser, self.frozen)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resumed with other optimizer or LR-schedule settings than the checkpoint was trained
        with (`ckpt_path=... optimizer.lr=...`): they take effect from the resumed step on. A
        LoRA run's adapters go back onto the pretrained weights net.path loaded."""
        if "pretrained" in checkpoint:
            restore_frozen(checkpoint["state_dict"], self.denoiser, checkpoint["pretrained"],
                           PREFIXES, "the checkpoint")  # fmt: skip
        config = self.hparams.get("config") or {}
        if changes := resume_with(config, checkpoint, self.configure_optimizers):
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


def load_image_net(net: Net, path: str) -> set[str]:
    """Inflate `net` with the EMA net weights of the checkpoint at `path` (`model.init_from`);
    returns the names it loaded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    except (OSError, KeyError, RuntimeError) as e:
        raise ValueError(
            f"model.init_from={path}: cannot read a difftrain checkpoint there ({e}). Fix: point "
            "it at an image run's checkpoint, e.g. <run dir>/checkpoints/last.ckpt"
        ) from None
    prefix = "ema.module.net."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        fresh = inflate(net, weights)
    except ValueError as e:
        raise ValueError(f"model.init_from={path}: {e}") from None
    log.info("the net starts from %s's weights (%d tensors); %d temporal tensors start at "
             "initialisation", path, len(weights), len(fresh))  # fmt: skip
    return set(weights)
