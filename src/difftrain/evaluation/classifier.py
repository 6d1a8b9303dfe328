"""A small CNN classifier trained on the dataset itself, as an offline feature extractor.

Registered with torch-fidelity as `difftrain-classifier`, so torch-fidelity's metric code runs
on its 128-d penultimate features ("features") and its class logits ("logits").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from difftrain.console import Progress, duration
from difftrain.files import filling, load_cached, save_atomically

log = logging.getLogger(__name__)
CLASSIFIER = "difftrain-classifier"
CLASSIFIER_VERSION = 1  # part of the cache key: bump it when Classifier or its training changes


class Classifier(nn.Module):
    """conv-conv-pool twice, conv, global average pool -> 128-d features -> class logits."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.config = {"channels": channels, "num_classes": num_classes, "width": width}

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        w = width
        self.body = nn.Sequential(
            *block(channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(4 * w, num_classes))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images (B, C, H, W) -> (features (B, 4 width), logits (B, num_classes))."""
        features = self.body(images.float() / 127.5 - 1)
        return features, self.head(features)


class ClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity's view of a trained `Classifier` (weights from `feature_extractor_weights_path`)."""

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str, **kwargs
    ):
        super().__init__(name, features_list)
        state = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.classifier = Classifier(**state["config"])
        self.classifier.load_state_dict(state["state_dict"])
        self.classifier.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, str]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features, logits = self.classifier(images)
        out = {"features": features, "logits": logits}
        return tuple(out[name] for name in self.features_list)


if CLASSIFIER not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLASSIFIER, ClassifierFeatures)


class _AsUint8(Dataset):
    """(image in [0, 1], label) -> (uint8 image, label)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.dataset[i]
        return (x * 255).round().to(torch.uint8), y


def accuracy(model: Classifier, dataset: Dataset, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(_AsUint8(dataset), batch_size=batch_size):
            correct += (model(x)[1].argmax(1) == y).sum().item()
    return correct / len(dataset)


def train_classifier(
    train: Dataset,
    test: Dataset,
    channels: int,
    num_classes: int,
    epochs: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    what: str = "the classifier",
    build: Callable[[], nn.Module] | None = None,
    unit: str = "images",
) -> tuple[nn.Module, float]:
    """Train a `Classifier` (or what `build` makes: a module taking uint8 images or clips to
    (features, logits)) on `train` with random translations of up to 2 pixels; returns the model
    and its test accuracy."""
    torch.manual_seed(seed)
    model = build() if build is not None else Classifier(channels, num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    batch_size = min(batch_size, len(train))
    loader = DataLoader(_AsUint8(train), batch_size=batch_size, shuffle=True, drop_last=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * len(loader))
    progress = Progress(f"training {what}", epochs * len(loader) * batch_size, unit, quiet=True)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            shift = torch.randint(-2, 3, (2,)).tolist()  # one random translation per batch
            x = torch.roll(x, shifts=shift, dims=(-2, -1))  # (H, W) of images or of clips
            loss = F.cross_entropy(model(x)[1], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            progress.update(len(x))
    progress.close()
    return model.eval(), accuracy(model, test)


def load_or_train_classifier(
    key: str,
    cache_dir: str | Path,
    datasets: Callable[[str], Dataset],
    channels: int,
    num_classes: int,
    epochs: int,
    what: str = "the evaluation classifier",
    build: Callable[[], nn.Module] | None = None,
    unit: str = "images",
) -> tuple[Path, float]:
    """The cached classifier for `key` (trained on first use, saying so as `what`; a `Classifier`,
    or what `build` makes); its weights file and test accuracy."""
    if num_classes < 2:
        raise ValueError(
            "evaluator=classifier needs a labelled dataset (data.num_classes >= 2, got "
            f"{num_classes}); set data.num_classes, or use evaluator=inception"
        )
    path = Path(cache_dir) / "classifiers" / f"{key}.pt"
    with filling(path):  # another run training the same classifier: wait for it, then read it
        if (state := load_cached(path)) is not None:
            log.info(
                "using the cached classifier %s (test accuracy %.4f)", path, state["test_accuracy"]
            )
            return path, state["test_accuracy"]
        train = datasets("train")
        log.info(
            "training %s on %d %s for %d epochs (first use; cached for later runs in %s)",
            what, len(train), unit, epochs, path.parent,
        )  # fmt: skip
        start = time.perf_counter()
        model, acc = train_classifier(
            train, datasets("val"), channels, num_classes, epochs, what=what, build=build, unit=unit
        )
        state = {"config": model.config, "state_dict": model.state_dict(), "test_accuracy": acc}
        save_atomically(state, path)
        path.with_suffix(".json").write_text(
            json.dumps({"key": key, "test_accuracy": acc, "epochs": epochs})
        )
    log.info(
        "trained %s in %s: test accuracy %.4f (%s)",
        what, duration(time.perf_counter() - start), acc, path,
    )  # fmt: skip
    return path, acc
