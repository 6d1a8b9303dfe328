"""`VideoEvaluator`: per-frame quality and temporal measures of uint8 clips against real ones.

Per frame: the image `Evaluator` (FID, KID, precision/recall and class coverage on the features
of the dataset's own classifier), trained and referenced on one frame of each clip
(`FrameDatasets`). Over time, against the real clips of `reference_split`:

- identity consistency: the share of clips whose frames the classifier gives one class;
- flicker: the mean absolute frame-to-frame difference of the pixels (in [0, 1]);
- speed: the mean distance the brightness centroid moves per frame (pixels);
- motion deviation: how far the centroid strays per frame from constant velocity, where a
  reversal of either axis near the edge the digits bounce off counts as constant velocity.

Each comes with the real clips' value (`real_*`) and, for the last three, the ratio to it.
The motion measures read one moving object per clip (moving_digits with num_digits=1).

Whole clips: `clip_fd`, the Fréchet distance on the features of a small 3D CNN trained on the
training clips (`evaluation.clip_classifier`; not FVD), against the reference clips, beside
`real_clip_fd`, the same distance for as many real training clips (its floor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from difftrain.data.datasets import TensorImages
from difftrain.evaluation.classifier import load_or_train_classifier
from difftrain.evaluation.clip_classifier import (
    ORDERS,
    ClipClassifier,
    OrderTask,
    clip_classifier_key,
    epochs_for,
)
from difftrain.evaluation.evaluator import Evaluator, dataset_uint8
from difftrain.evaluation.features import FeatureSet, extract_features
from difftrain.evaluation.fvd import i3d_features, load_i3d
from difftrain.evaluation.metrics import frechet_distance

MOTION = ("flicker", "speed", "motion_deviation")


class FrameDatasets:
    """The image datasets of a clip dataset: split -> one frame of each clip (frame i mod T of
    clip i, so every frame position is represented), with the clip's label."""

    def __init__(self, clips: Callable[[str], Dataset]):
        self.clips = clips

    def __call__(self, split: str) -> TensorImages:
        dataset = self.clips(split)
        clips = dataset.images  # (N, C, T, H, W) uint8
        index = torch.arange(len(clips))
        return TensorImages(
            clips[index, :, index % clips.shape[2]], torch.as_tensor(dataset.labels)
        )

    def __repr__(self) -> str:  # what cache keys read (datamodule.described)
        return f"FrameDatasets({self.clips!r})"


def centroids(clips: Tensor) -> Tensor:
    """The brightness centroid (x, y) in pixels of every frame: uint8 (N, C, T, H, W) -> (N, T, 2)."""
    x = clips.float().mean(1)  # (N, T, H, W)
    mass = x.sum((2, 3)).clamp_min(1e-6)  # (N, T)
    ys = torch.arange(x.shape[2], dtype=x.dtype)
    xs = torch.arange(x.shape[3], dtype=x.dtype)
    cx = (x.sum(2) * xs).sum(2) / mass
    cy = (x.sum(3) * ys).sum(2) / mass
    return torch.stack([cx, cy], dim=-1)


def clip_measures(clips: Tensor, low: Tensor, high: Tensor, margin: float) -> Tensor:
    """Per clip (flicker, speed, motion deviation) of uint8 clips (N, C, T, H, W): (N, 3).

    A centroid within `margin` pixels of `low` or `high` (per axis, (2,)) may reverse along that
    axis (a bounce) and still count as moving at constant velocity."""
    x = clips.float() / 255
    flicker = (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 2, 3, 4))
    c = centroids(clips)  # (N, T, 2)
    v = c[:, 1:] - c[:, :-1]  # (N, T-1, 2)
    speed = v.norm(dim=-1).mean(1)
    keep = (v[:, 1:] - v[:, :-1]).abs()  # (N, T-2, 2): the change of velocity
    at_edge = (c[:, 1:-1] < low + margin) | (c[:, 1:-1] > high - margin)
    bounced = torch.where(at_edge, torch.minimum(keep, (v[:, 1:] + v[:, :-1]).abs()), keep)
    deviation = bounced.norm(dim=-1).mean(1)
    return torch.stack([flicker, speed, deviation], dim=1)


class VideoEvaluator:
    """Scores uint8 clips (N, C, T, H, W): the `frames` evaluator on every frame (its metrics
    under their names: fid is the per-frame FID), identity consistency, flicker, speed and
    motion deviation against up to `max_reference_clips` real clips of `reference_split`, and
    with `clip_classifier_clips` > 0 the clip classifier's Fréchet distance, its classifier
    trained (once, cached beside the frame classifier) on that many training clips for about
    `clip_classifier_examples` examples, and with `i3d_path` (a local TorchScript I3D,
    `evaluation.fvd`) FVD, both beside their real-vs-real floor. The same interface as
    `Evaluator` (setup, features, score, info), so training's evaluation callback and
    difftrain-eval take either."""

    def __init__(
        self,
        datasets: Callable[[str], Dataset],
        frames: Evaluator,
        reference_split: str = "val",
        max_reference_clips: int = 1000,
        bounce_margin: float = 3.0,
        clip_classifier_clips: int = 10_000,
        clip_classifier_examples: int = 60_000,
        clip_classifier_min_accuracy: float = 0.8,
        i3d_path: str | None = None,
    ):
        self.datasets, self.frame_evaluator = datasets, frames
        self.reference_split, self.max_reference_clips = reference_split, max_reference_clips
        self.bounce_margin = bounce_margin
        self.clip_classifier_clips = clip_classifier_clips
        self.clip_classifier_examples = clip_classifier_examples
        self.clip_classifier_min_accuracy = clip_classifier_min_accuracy
        self.clip_classifier: ClipClassifier | None = None
        self.i3d = load_i3d(i3d_path) if i3d_path is not None else None  # fails fast, at start
        self.real: dict[str, float] = {}
        self.real_clip_features = self.floor_clip_features = None
        self.real_i3d_features = self.floor_i3d_features = None
        self.low = self.high = None

    @property
    def info(self) -> dict[str, object]:
        return self.frame_evaluator.info

    @property
    def extractor(self):
        return self.frame_evaluator.extractor

    def setup(self, device: torch.device | str = "cpu") -> None:
        """The frame evaluator's setup (its classifier and reference features), then the real
        clips' measures."""
        self.frame_evaluator.setup(device)
        if self.real:
            return
        clips = dataset_uint8(self.datasets(self.reference_split), self.max_reference_clips)
        c = centroids(clips)
        self.low, self.high = c.flatten(0, 1).amin(0), c.flatten(0, 1).amax(0)
        if self.clip_classifier_clips > 0:
            self._setup_clip_classifier(device)
        if self.i3d is not None:
            self.i3d.to(device)
            floor = dataset_uint8(self.datasets("train"), self.max_reference_clips)
            self.floor_i3d_features = i3d_features(self.i3d, floor)  # real clips, not the reference
        real = self._features(clips)
        self.real = self._summary(real)
        self.real_clip_features, self.real_i3d_features = real.clip_features, real.i3d_features
        self.info["reference_clips"] = f"{self.reference_split}:{len(clips)}"

    def _setup_clip_classifier(self, device: torch.device | str) -> None:
        """The clip classifier (cached, or trained now on the first `clip_classifier_clips`
        training clips), and the features of as many later training clips as the reference
        has, for the real-vs-real floor."""
        train_set = self.datasets("train")
        train = dataset_uint8(train_set)
        labels = getattr(train_set, "labels", None)
        used = min(self.clip_classifier_clips, len(train))
        classes = self.frame_evaluator.num_classes if labels is not None else 0
        val_set = self.datasets(self.reference_split)
        tasks = {
            "train": OrderTask(train[:used], None if not classes else labels[:used]),
            "val": OrderTask(
                dataset_uint8(val_set, self.max_reference_clips),
                None
                if not classes
                else torch.as_tensor(val_set.labels)[: self.max_reference_clips],
                seed=1,
            ),
        }
        outputs = max(classes, 1) * len(ORDERS)
        epochs = epochs_for(self.clip_classifier_examples, len(tasks["train"]), 100)
        path, accuracy = load_or_train_classifier(
            clip_classifier_key(train[:used], classes, used, epochs),
            self.frame_evaluator.cache_dir, tasks.__getitem__, train.shape[1], outputs, epochs,
            what="the clip classifier", build=lambda: ClipClassifier(train.shape[1], outputs),
            unit="clips",
        )  # fmt: skip
        self.info["clip_classifier_test_accuracy"] = accuracy
        if accuracy < self.clip_classifier_min_accuracy:
            raise ValueError(
                f"the clip classifier ({path}) reaches only {accuracy:.3f} accuracy on held-out "
                f"clips (class and order), below evaluator.clip_classifier_min_accuracy="
                f"{self.clip_classifier_min_accuracy}: train it on more "
                "(evaluator.clip_classifier_examples), or set evaluator.clip_classifier_clips=0"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.clip_classifier = ClipClassifier(**state["config"])
        self.clip_classifier.load_state_dict(state["state_dict"])
        self.clip_classifier.eval().to(device)
        unseen = train[used : used + self.max_reference_clips]  # clips it did not train on
        floor = unseen if len(unseen) >= 2 else train[: self.max_reference_clips]
        self.floor_clip_features = self._clip_features(floor)

    @torch.no_grad()
    def _clip_features(self, clips: Tensor) -> Tensor:
        """The clip classifier's features (N, D) of uint8 clips (N, C, T, H, W)."""
        device = next(self.clip_classifier.parameters()).device
        batches = clips.split(self.frame_evaluator.batch_size)
        return torch.cat([self.clip_classifier(b.to(device))[0].float().cpu() for b in batches])

    def _features(self, clips: Tensor) -> FeatureSet:
        if clips.dtype != torch.uint8 or clips.ndim != 5:
            raise ValueError(
                f"expected uint8 clips (N, C, T, H, W), got {clips.dtype} {tuple(clips.shape)}"
            )
        frames = clips.transpose(1, 2).flatten(0, 1)  # (N, C, T, H, W) -> (N*T, C, H, W)
        self.frame_evaluator.check_images(frames)
        per_frame = extract_features(self.extractor, frames, self.frame_evaluator.batch_size)
        measures = clip_measures(clips, self.low, self.high, self.bounce_margin)
        whole = self._clip_features(clips) if self.clip_classifier is not None else None
        i3d = i3d_features(self.i3d, clips) if self.i3d is not None else None
        return FeatureSet(per_frame.features, per_frame.logits, measures, whole, i3d)

    def features(self, samples: Tensor, datamodule: object) -> FeatureSet:
        """Features and measures of model-range clips, made uint8 by the datamodule's media."""
        return self._features(datamodule.to_uint8(samples))

    def _summary(self, features: FeatureSet) -> dict[str, float]:
        clips = len(features.per_clip)
        classes = features.logits.argmax(-1).unflatten(0, (clips, -1))  # (N*T,) -> (N, T)
        same = (classes == classes[:, :1]).all(1).float().mean().item()
        means = features.per_clip.mean(0).tolist()
        return {"identity_consistency": same, **dict(zip(MOTION, means, strict=True))}

    def score(self, features: FeatureSet, seed: int = 0) -> dict[str, object]:
        """Per-frame metrics, and the temporal measures with the real clips' and their ratio."""
        results = self.frame_evaluator.score(FeatureSet(features.features, features.logits), seed)
        for name, value in self._summary(features).items():
            results[name], results[f"real_{name}"] = value, self.real[name]
            if name in MOTION:
                results[f"{name}_ratio"] = value / max(self.real[name], 1e-12)
        for name, generated, floor, real in (
            ("clip_fd", features.clip_features, self.floor_clip_features, self.real_clip_features),
            ("fvd", features.i3d_features, self.floor_i3d_features, self.real_i3d_features),
        ):
            if generated is not None and real is not None:
                n = len(generated)  # the floor with as many clips: FD's bias depends on n
                results[name] = frechet_distance(generated, real)
                results[f"real_{name}"] = frechet_distance(floor[:n], real)
        return results

    def __call__(self, clips: Tensor, seed: int = 0) -> dict[str, object]:
        """Metrics of uint8 clips (N, C, T, H, W)."""
        if not self.real:
            self.setup()
        return self.score(self._features(clips), seed)


def copy_last_given(clips: Tensor, frame_mask: Tensor) -> Tensor:
    """The copy-last-frame baseline of prediction: every frame of clips (N, C, T, H, W) replaced
    by the latest given frame at or before it (`frame_mask` (N, T); the first given one before
    any is given)."""
    t = torch.arange(clips.shape[2], device=clips.device).expand_as(frame_mask)
    latest = torch.where(frame_mask.bool(), t, -1).cummax(1).values  # (N, T)
    first = frame_mask.float().argmax(1, keepdim=True).expand_as(latest)
    source = torch.where(latest < 0, first, latest)
    index = source[:, None, :, None, None].expand_as(clips)
    return clips.gather(2, index)


def prediction_scores(predicted: Tensor, truth: Tensor, frame_mask: Tensor) -> dict[str, float]:
    """SSIM, PSNR (dB) and MSE of the frames not given (`frame_mask` (N, T) false) of predicted
    clips against the true ones, uint8 (N, C, T, H, W), in [0, 1], with torchmetrics; beside them
    `copy_last_*`, the same for the copy-last-given-frame baseline."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    if not (~frame_mask.bool()).any():
        raise ValueError("every frame is given: there is no prediction to score")
    frames = lambda clips: clips.float().div(255).transpose(1, 2)[~frame_mask.bool()]  # noqa: E731
    truth_frames = frames(truth)  # (F, C, H, W): every predicted frame of every clip
    scores = {}
    for name, clips in (("", predicted), ("copy_last_", copy_last_given(truth, frame_mask))):
        guess = frames(clips)
        mse = (guess - truth_frames).square().flatten(1).mean(1)
        scores[f"{name}ssim"] = structural_similarity_index_measure(
            guess, truth_frames, data_range=1.0
        ).item()
        scores[f"{name}psnr"] = peak_signal_noise_ratio(
            guess, truth_frames, data_range=1.0, reduction="none", dim=(1, 2, 3)
        ).clamp(max=100).mean().item()  # fmt: skip
        scores[f"{name}mse"] = mse.mean().item()
    return scores
