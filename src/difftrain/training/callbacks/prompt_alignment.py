"""`Alignment`: prompt alignment of EMA samples during training, on captioned data
(captioned_digits, moving_digits_text)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from difftrain.diffusion.samplers import Sampler
from difftrain.evaluation.alignment import AttributeJudge, alignment, prompt_set
from difftrain.evaluation.metrics import frechet_distance
from difftrain.training.callbacks.cadence import EveryNValidations

log = logging.getLogger(__name__)


class Alignment(L.Callback):
    """After every `every_n_validations`-th validation, draws one sample for each of `num_seen`
    prompts of attribute combinations seen in training and `num_per_held_out` prompts of each
    held-out combination (the data's `held_out`), and logs the share whose attributes the
    attribute judge finds as asked (captioned_digits: digit, foreground and background colour,
    size and position; moving_digits_text: digit, colour and direction): `eval/align_<attribute>`,
    `eval/align_all` (all at once), and `eval/align_heldout_*` for the held-out prompts. The same
    samples give `eval/fid`: the FID of some judges' features against `num_reference` validation
    examples (comparable between runs of the same data and prompt set, not with other FIDs). With
    `clip_score_model` (a folder or hub name of a CLIP model, vision and text), also
    `eval/clip_score`: torchmetrics' CLIPScore of the samples against their prompts.

    The judge is trained on the run's training images on first use and cached under
    `cache_dir`. Every process draws the samples (rank zero logs).
    """

    def __init__(
        self,
        sampler: Sampler,
        cache_dir: str,
        num_seen: int = 200,
        num_per_held_out: int = 50,
        guidance: float = 3.0,
        seed: int = 0,
        every_n_validations: int = 1,
        judge_images: int = 20000,
        judge_epochs: int = 3,
        judge_min_accuracy: float = 0.9,
        batch_size: int = 256,
        num_reference: int = 2000,
        clip_score_model: str | None = None,
    ):
        self.sampler, self.cache_dir = sampler, Path(cache_dir)
        self.num_seen, self.num_per_held_out = num_seen, num_per_held_out
        self.guidance, self.seed = guidance, seed
        self.cadence = EveryNValidations(every_n_validations)
        self.judge_images, self.judge_epochs, self.batch_size = (
            judge_images,
            judge_epochs,
            batch_size,
        )
        self.judge_min_accuracy, self.num_reference = judge_min_accuracy, num_reference
        self.judge: AttributeJudge | None = None
        self.reference = None
        self.clip_score_model, self.clip_score = clip_score_model, None
        self.seconds = 0.0
        self.last: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.check_sampler(self.sampler)
        datamodule = trainer.datamodule
        datamodule.setup("fit")
        train, val = datamodule.train_set.dataset, datamodule.val_set.dataset
        if getattr(train, "schema", None) is None:
            raise ValueError(
                "callbacks.alignment needs captioned data (data=captioned_digits or "
                "data=moving_digits_text); drop it with callbacks.alignment=null"
            )
        start = time.perf_counter()
        self.judge = AttributeJudge.load_or_train(
            train, val, self.cache_dir, self.judge_images, self.judge_epochs,
            self.judge_min_accuracy,
        )  # fmt: skip
        self.schema = train.schema
        self.asked, self.held_out = prompt_set(
            self.num_seen, self.num_per_held_out, train.held_out, self.seed, self.schema
        )
        self.reference = self.judge.features(val.images[: self.num_reference])
        if self.clip_score_model is not None:
            if train.images.ndim != 4:
                raise ValueError(
                    "callbacks.alignment.clip_score_model scores images, not clips: set it to null"
                )
            self.clip_score = clip_score_metric(self.clip_score_model)
        self.seconds += time.perf_counter() - start

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.cadence.due(trainer):
            return
        start = time.perf_counter()
        self.last = self.score(pl_module, trainer.datamodule)  # the same on every process
        for name, value in self.last.items():
            key = f"eval/{name}" if name in ("fid", "clip_score") else f"eval/align_{name}"
            pl_module.log(key, value, sync_dist=True)
        if trainer.is_global_zero:
            log.info(
                "alignment at step %d: %s", trainer.global_step,
                ", ".join(f"{k} {v:.3f}" for k, v in self.last.items()),
            )  # fmt: skip
        self.seconds += time.perf_counter() - start

    def score(self, model: Any, datamodule: Any) -> dict[str, float]:
        """Draw the prompt set with `model.generate` and judge it."""
        prompts = self.schema.captions(self.asked)
        samples, _ = model.generate(
            len(prompts), self.sampler, seed=self.seed, prompts=prompts,
            guidance=self.guidance, batch_size=self.batch_size,
        )  # fmt: skip
        images = datamodule.to_uint8(samples)  # (N, C, H, W) or clips (N, C, T, H, W)
        predicted = self.judge.predict(images)
        scores = alignment(predicted, self.asked, self.held_out, self.schema.attributes)
        scores["fid"] = frechet_distance(self.judge.features(images), self.reference)
        if self.clip_score is not None:
            self.clip_score.reset()
            self.clip_score.update(images, prompts)
            scores["clip_score"] = self.clip_score.compute().item()
        return scores

    def summary(self) -> dict[str, Any]:
        if not self.last:
            return {}
        return {
            "alignment": {
                **self.last,
                "judge_accuracy": self.judge.accuracies if self.judge else {},
                "prompts": len(self.asked),
                "held_out_prompts": int(self.held_out.sum()),
                "seconds": self.seconds,
            }
        }


def clip_score_metric(path: str) -> Any:
    """torchmetrics' CLIPScore with the CLIP model and processor at `path` (a folder or a hub
    name); torchmetrics itself takes only the openai hub names."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    def load() -> tuple[Any, Any]:
        try:
            model = _TensorFeatures(CLIPModel.from_pretrained(path))
            return model, CLIPProcessor.from_pretrained(path)
        except OSError as e:
            raise FileNotFoundError(
                f"callbacks.alignment.clip_score_model={path!r} could not be loaded: {e}. Fix: a "
                "folder with a CLIP model and its processor (save_pretrained's files), or null"
            ) from e

    return CLIPScore(model_name_or_path=load)


class _TensorFeatures(torch.nn.Module):
    """A CLIPModel whose get_image_features and get_text_features return the embeddings as
    tensors, as torchmetrics reads them (transformers 5 returns model outputs instead)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return _embeddings(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Tensor:
        return _embeddings(self.model.get_text_features(*args, **kwargs))


def _embeddings(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output.pooler_output
