"""FVD: the Fréchet distance on I3D's features (Unterthiner et al. 2018), from a local file.

FVD's feature extractor is I3D trained on Kinetics-400. Its weights cannot be downloaded on every
machine, so `evaluator.i3d_path` names a local copy of the TorchScript export that StyleGAN-V's
FVD loads and most video papers since report with (`i3d_torchscript.pt`, at I3D_URL): a module
called as `detector(x, rescale=False, resize=False, return_features=True)` on clips
(B, 3, T, 224, 224) in [-1, 1], giving (B, 400) features. Each frame is resized (shorter side to
224, bilinear) and center-cropped as that protocol does; grey clips are repeated to RGB. An FVD
compares only with FVDs of the same number of clips, frames and resolution: `VideoEvaluator`
gives `real_fvd`, the floor of as many real clips, beside it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_SIZE = 224


def load_i3d(path: str | Path | None) -> torch.jit.ScriptModule:
    """The TorchScript I3D at `path`; FileNotFoundError or ValueError with the fix otherwise."""
    fix = (
        f"Fix: download {I3D_URL} where there is internet, copy it here and set "
        "evaluator.i3d_path=/path/to/i3d_torchscript.pt, or set evaluator.i3d_path=null "
        "(clip_fd needs no download)"
    )
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"evaluator.i3d_path={path}: no such file. {fix}")
    try:
        detector = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"evaluator.i3d_path={path} is not a TorchScript module ({e}). {fix}"
        ) from None
    return detector.eval()


def i3d_input(clips: Tensor, size: int = I3D_SIZE) -> Tensor:
    """uint8 clips (N, C, T, H, W), C 1 or 3 -> I3D's input (N, 3, T, size, size) in [-1, 1]:
    every frame's shorter side resized to `size` (bilinear) and center-cropped."""
    n, c, t, h, w = clips.shape
    if c not in (1, 3):
        raise ValueError(f"I3D reads RGB or grey clips, not {c} channels")
    frames = clips.transpose(1, 2).flatten(0, 1).float() / 255  # (N*T, C, H, W)
    scale = size / min(h, w)
    frames = F.interpolate(
        frames, size=(math.ceil(h * scale), math.ceil(w * scale)), mode="bilinear",
        align_corners=False,
    )  # fmt: skip
    top, left = (frames.shape[-2] - size) // 2, (frames.shape[-1] - size) // 2
    frames = frames[..., top : top + size, left : left + size].expand(-1, 3, -1, -1)
    return (frames.unflatten(0, (n, t)).transpose(1, 2) * 2 - 1).contiguous()


@torch.no_grad()
def i3d_features(detector: torch.jit.ScriptModule, clips: Tensor, batch_size: int = 16) -> Tensor:
    """I3D's features (N, D) of uint8 clips (N, C, T, H, W), on the detector's device."""
    device = next(detector.parameters()).device
    out = []
    for batch in clips.split(batch_size):
        try:
            features = detector(
                i3d_input(batch).to(device), rescale=False, resize=False, return_features=True
            )
        except RuntimeError as e:
            raise ValueError(
                f"I3D could not read clips (N, C, T, H, W) {tuple(clips.shape)}: {e}"
            ) from e
        out.append(features.double().cpu())
    return torch.cat(out)
