"""Where the Hydra configs live, and helpers to compose them outside a Hydra app (tests, notebooks)."""

from __future__ import annotations

import math
import secrets
from pathlib import Path

from omegaconf import ListConfig, OmegaConf

import difftrain.runs.sweep  # noqa: F401  registers the ${job:...} resolver the configs use
from difftrain.data.datasets import folder_classes

# Run dirs are named by launch time and this process's id: two runs started in the same second
# (a second terminal, an array job) still get one dir each. DDP's worker processes are given
# their parent's run dir by Lightning, so they never name one.
RUN_ID = secrets.token_hex(3)
OmegaConf.register_new_resolver("run_id", lambda: RUN_ID, replace=True)
OmegaConf.register_new_resolver("image_folder_classes", folder_classes, replace=True)


def _video_folder_classes(root: str) -> int:
    from difftrain.data.clips import video_folder_classes

    return video_folder_classes(root)


OmegaConf.register_new_resolver("video_folder_classes", _video_folder_classes, replace=True)


def _caption_vocab(kind: str, root: str | None = None) -> ListConfig:
    """The words of a dataset's captions (its tokenizer's vocabulary):
    ${caption_vocab:captioned_digits}, ${caption_vocab:moving_digits_text}, or
    ${caption_vocab:folder,<root>} for a caption folder."""
    from difftrain.data.captioned import caption_vocab, folder_vocab
    from difftrain.data.clips import CLIP_CAPTIONS

    if kind == "captioned_digits":
        return OmegaConf.create(caption_vocab())
    if kind == "moving_digits_text":
        return OmegaConf.create(CLIP_CAPTIONS.vocab())
    if kind == "folder" and root:
        return OmegaConf.create(folder_vocab(root))
    raise ValueError(
        f"no caption vocabulary for {kind!r}: use captioned_digits, moving_digits_text or "
        "folder,<root>"
    )


OmegaConf.register_new_resolver("caption_vocab", _caption_vocab, replace=True)


def _sample_resolution(sample_shape: ListConfig | None) -> float | None:
    """The resolution a noise schedule's shift reads (`${sample_resolution:${data.sample_shape}}`):
    the side of a square image with as many values per channel as one sample, sqrt(T H W) for
    clips (C, T, H, W), H for images (C, H, H); None for samples without channels (points)."""
    if sample_shape is None or len(sample_shape) < 3:
        return None
    values = math.prod(int(s) for s in sample_shape[1:])
    side = math.isqrt(values)
    return side if side * side == values else math.sqrt(values)


OmegaConf.register_new_resolver("sample_resolution", _sample_resolution, replace=True)


def config_dir() -> Path:
    """`conf/` of a source checkout, or the copy packaged inside an installed wheel."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


CONFIG_DIR = str(config_dir())


def compose_net(name: str, channels: int, image_size: int, *overrides: str):
    """The net of option `net=name` for images channels x image_size x image_size, built from the
    composed config (with its option bases, e.g. `_unet`), as a run would build it."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    data = [f"data.channels={channels}", f"data.image_size={image_size}"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"net={name}", *data, *overrides])
    return instantiate(cfg.net)
