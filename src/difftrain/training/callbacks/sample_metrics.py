"""`Evaluate`: FID/KID (and class coverage) of EMA samples during training."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from difftrain.diffusion.samplers import Sampler, solver_function
from difftrain.evaluation.evaluator import Evaluator
from difftrain.evaluation.features import FeatureSet
from difftrain.evaluation.toy import ToyEvaluator
from difftrain.evaluation.video import VideoEvaluator
from difftrain.training.callbacks.cadence import EveryNValidations

LATEST = ("fid", "class_entropy", "classes_under_threshold", "precision", "recall",
          "modes_captured", "hq_share", "identity_consistency", "flicker_ratio", "speed_ratio",
          "motion_deviation_ratio")  # fmt: skip


class Evaluate(L.Callback):
    """After every `every_n_validations`-th validation, scores `num_samples` EMA samples.

    Logs eval/fid, eval/kid, eval/precision, eval/recall and, with the classifier, eval/class_entropy
    and eval/classes_under_threshold. Under DDP each rank draws its share (samples
    rank * share .. of one stream, so the samples are those of one process) and extracts their
    features; rank zero gathers and scores them. `seconds` is the time spent here, including
    `setup_seconds` for the evaluator's one-off setup (training the classifier and computing
    reference features, both cached for later runs).
    """

    def __init__(
        self,
        evaluator: Evaluator | ToyEvaluator | VideoEvaluator,
        sampler: Sampler,
        num_samples: int = 1000,
        seed: int = 0,
        guidance: float = 1.0,
        every_n_validations: int = 1,
    ):
        self.evaluator, self.sampler, self.num_samples = evaluator, sampler, num_samples
        self.seed, self.guidance = seed, guidance
        self.cadence = EveryNValidations(every_n_validations)
        self.seconds, self.setup_seconds = 0.0, 0.0
        self.last: dict[str, object] = {}
        self.step = 0  # the global step of the last scores

    @property
    def identity(self) -> dict[str, object]:
        """What the scores depend on besides the model: extractor, reference, sampler, n.

        Runs whose identities differ have eval/* metrics that do not compare.
        """
        if not self.evaluator.info:
            return {}
        solver = solver_function(self.sampler.solver).__name__
        sampler = f"{solver}-{self.sampler.steps}-{self.sampler.spacing}-{self.sampler.sigma_max}"
        if self.sampler.sigma_min is not None:  # the consistency sampler's lowest level
            sampler += f"-{self.sampler.sigma_min}"
        if self.sampler.levels is not None:  # explicit levels replace steps and spacing
            sampler = f"{solver}-levels-{'-'.join(f'{s:g}' for s in self.sampler.levels)}"
        return {
            "extractor": self.evaluator.info.get("extractor"),
            "reference": self.evaluator.info.get("reference"),
            "sampler": sampler,
            "num_samples": self.num_samples,
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.check_sampler(self.sampler)
        pl_module.diffusion.check_guidance(self.guidance)
        start = time.perf_counter()
        # Training the classifier seeds and draws random numbers; a cache hit does not. Forking the
        # generators keeps the training run the same either way.
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if trainer.is_global_zero:  # trains the classifier and caches reference features once
                self.evaluator.setup(pl_module.device)
            trainer.strategy.barrier()
            self.evaluator.setup(pl_module.device)  # the other ranks read the cache
        self.setup_seconds = time.perf_counter() - start
        self.seconds += self.setup_seconds

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.cadence.due(trainer):
            return
        start = time.perf_counter()
        features = self._features(trainer, pl_module)
        scores = self.evaluator.score(features, seed=self.seed) if trainer.is_global_zero else {}
        self.last = trainer.strategy.broadcast(scores)  # rank 0 scores; every process logs them
        self.step = trainer.global_step
        for key, value in self.last.items():  # the same on every process: the mean changes nothing
            if isinstance(value, float):
                pl_module.log(f"eval/{key}", value, sync_dist=True)
        if "classes_under_threshold" in self.last:
            missing = float(len(self.last["classes_under_threshold"]))
            pl_module.log("eval/classes_under_threshold", missing, sync_dist=True)
        self.seconds += time.perf_counter() - start

    def _features(self, trainer: L.Trainer, pl_module: L.LightningModule) -> FeatureSet:
        """This rank's share of samples -> features, gathered from every rank."""
        per_rank = self.num_samples // trainer.world_size  # equal shares, so they can be gathered
        images, _ = pl_module.generate(
            per_rank, self.sampler, seed=self.seed, start=trainer.global_rank * per_rank,
            guidance=self.guidance,
        )  # fmt: skip
        local = self.evaluator.features(images, trainer.datamodule)
        if trainer.world_size == 1:
            return local
        parts = {k: v for k, v in vars(local).items() if v is not None}
        gathered = {k: pl_module.all_gather(t.to(pl_module.device)) for k, t in parts.items()}
        return FeatureSet(**{k: g.flatten(0, 1).cpu() for k, g in gathered.items()})

    def summary(self) -> dict[str, Any]:
        if not self.last:
            return {}
        scores = {k: v for k, v in self.last.items() if isinstance(v, float)}
        latest = {k: self.last[k] for k in LATEST if k in self.last}
        timing = {"seconds": self.seconds, "setup_seconds": self.setup_seconds}
        feature = self.evaluator.info.get("feature")
        return {
            "evaluation": {
                **self.identity,
                "feature": feature,
                "step": self.step,
                "scores": scores,
                **timing,
            },  # fmt: skip
            "health": {"latest_evaluation": latest},
        }
