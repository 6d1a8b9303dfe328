"""Feature extractors (torch-fidelity's registry) and batched feature extraction from uint8 images."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.utils import create_feature_extractor

from difftrain.console import Progress
from difftrain.evaluation.classifier import CLASSIFIER
from difftrain.files import save_atomically

log = logging.getLogger(__name__)
INCEPTION = "inception-v3-compat"
LAYERS = {INCEPTION: ("2048", "logits_unbiased"), CLASSIFIER: ("features", "logits")}


@dataclass
class FeatureSet:
    """Features (N, D) for FID, KID and precision/recall; logits (N, K) for IS and class coverage;
    for clips also measures of each clip (N_clips, M) and its features of the clip classifier
    (N_clips, D') and of I3D (`evaluation.video`), N counting frames."""

    features: Tensor
    logits: Tensor
    per_clip: Tensor | None = None
    clip_features: Tensor | None = None
    i3d_features: Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)

    def save(self, path: Path) -> None:
        save_atomically({"features": self.features, "logits": self.logits}, path)


def inception_weights(path: str | None, timeout: float = 20.0) -> Path:
    """A local file with torch-fidelity's Inception-v3 weights: `path`, the torch hub cache, or a download.

    Fails fast (never hangs) with what to do when the weights are nowhere and cannot be downloaded.
    """
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"evaluator.inception_weights={path} does not exist")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
    if cached.is_file():
        return cached
    try:
        with (
            urllib.request.urlopen(URL_INCEPTION_V3, timeout=timeout) as response,
            tempfile.NamedTemporaryFile(delete=False) as tmp,
        ):
            shutil.copyfileobj(response, tmp)
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp.name, cached)
        return cached
    except Exception as e:  # no network, firewall, DNS: say what to do instead
        raise RuntimeError(
            f"Inception-v3 weights for FID are not in {cached} and could not be downloaded ({e}). "
            f"Fix: download {URL_INCEPTION_V3} where there is internet and pass its path as "
            "evaluator.inception_weights=/path/to/weights.pth, or use evaluator=classifier, "
            "which difftrain trains offline"
        ) from e


def build_extractor(
    name: str, weights_path: str | Path, device: torch.device | str = "cpu"
) -> FeatureExtractorBase:
    """torch-fidelity's feature extractor `name` with weights from a local file (never downloads)."""
    extractor = create_feature_extractor(
        name,
        list(LAYERS[name]),
        cuda=False,
        feature_extractor_weights_path=str(weights_path),
        verbose=False,
    )
    return extractor.to(device)


def file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:10]


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractorBase, images: Tensor, batch_size: int = 256, what: str = "features"
) -> FeatureSet:
    """Features of uint8 images (N, C, H, W); grayscale is repeated to RGB for Inception. Work
    longer than a few seconds reports its progress as `what`."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(
            f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    device = next(extractor.parameters()).device
    outputs = []
    progress = Progress(what, len(images), quiet=True)
    for batch in images.split(batch_size):
        batch = batch.to(device)
        if extractor.get_name() == INCEPTION and batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        outputs.append([o.float().cpu() for o in extractor(batch)])
        progress.update(len(batch))
    progress.close()
    features, logits = (torch.cat(parts) for parts in zip(*outputs, strict=True))
    return FeatureSet(features, logits)
