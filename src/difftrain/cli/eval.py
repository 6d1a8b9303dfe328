"""difftrain-eval: FID, KID, precision/recall (IS with Inception) and class coverage of a checkpoint.

    difftrain-eval ckpt=logs/mnist_edm/runs/<run>/checkpoints/last.ckpt n=10000
    difftrain-eval ckpt=... sampler=dpmpp_2m sampler.steps=10 evaluator=inception
    difftrain-eval samples=other_model.npz data=mnist data.dataset.root=../shared/data
    difftrain-eval ckpt=[run1/checkpoints/last.ckpt,run2/checkpoints/last.ckpt]   # an ensemble

Writes eval.json next to the checkpoint (or the sample file) and prints it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from difftrain.cli.sample import check_arguments, draw, sampler_config
from difftrain.config import CONFIG_DIR
from difftrain.console import quoted
from difftrain.data.media import Images, media_of
from difftrain.errors import ConfigError
from difftrain.runs.preflight import exit_on_bad_input
from difftrain.runs.pretrained import TrainedModel, load_models
from difftrain.runtime import resolve_device

log = logging.getLogger(__name__)


def _generate(cfg: DictConfig, model: TrainedModel) -> tuple[torch.Tensor, dict]:
    """n samples of the checkpoint's EMA weights as uint8 (N, C, H, W), and what describes them."""
    start = time.perf_counter()
    uint8, nfe, _, _ = draw(cfg, model, None)
    seconds = time.perf_counter() - start
    info = {
        "checkpoint": OmegaConf.to_container(cfg.ckpt)
        if OmegaConf.is_list(cfg.ckpt)
        else str(cfg.ckpt),
        "checkpoint_step": model.global_step,
        "sampler": OmegaConf.to_container(sampler_config(cfg, model)),
        "nfe": nfe,
        "guidance": cfg.guidance,
        "guide": cfg.get("guide"),
        "sampling_images_per_sec": cfg.n / seconds,
    }
    return model.media.from_stored(uint8), info


def _load_samples(path: str, n: int | None, media: Images) -> torch.Tensor:
    """uint8 samples, channels first, from an npz as difftrain-sample writes it: `images`
    (N, H, W, C), or for video data `videos` (N, T, H, W, C)."""
    with np.load(path) as data:
        if media.key not in data:
            raise KeyError(f"{path} has no {media.key!r} array (keys: {list(data)})")
        stored = torch.from_numpy(data[media.key])
    try:
        media.check_stored(stored)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return media.from_stored(stored[:n])


def check_evaluator(evaluator: DictConfig, media: Images) -> None:
    """Refuse an image evaluator for clips (and the clip evaluator for images), naming the fix."""
    for_clips = evaluator.get("_target_", "").endswith("VideoEvaluator")
    if media.key != "points" and (media.key == "videos") != for_clips:
        fix = "evaluator=video" if media.key == "videos" else "evaluator=classifier or inception"
        raise ConfigError(f"the data are {media.key}, which this evaluator does not score: {fix}")


# What the scores depend on besides the samples: the extractor and the reference set.
SCORE_KEYS = ("feature", "classifier_images", "split", "max_reference", "kid_subset_size")


def differs_from_run(evaluator: DictConfig, run: DictConfig) -> list[tuple[str, object, object]]:
    """(key, here, in the run) for each evaluator setting that makes these scores differ from the
    run's in-training ones (its `callbacks.evaluate`); none when the run did not evaluate."""
    theirs = run.get("evaluator") if OmegaConf.select(run, "callbacks.evaluate") else None
    if theirs is None:
        return []
    return [
        (key, evaluator.get(key), theirs.get(key))
        for key in SCORE_KEYS
        if key in theirs and evaluator.get(key) != theirs.get(key)
    ]


def evaluate(cfg: DictConfig) -> dict:
    """Generate (or load) samples, score them, write eval.json and return the results."""
    if (cfg.ckpt is None) == (cfg.samples is None):
        raise ValueError(
            "pass exactly one of ckpt=PATH (generate samples) or samples=FILE.npz (score a file)"
        )
    first = cfg.ckpt[0] if OmegaConf.is_list(cfg.ckpt) else cfg.ckpt or cfg.samples
    out = Path(cfg.out) if cfg.out else Path(first).parent / "eval.json"
    check_arguments(
        cfg, outputs={"out": out.absolute().parent, "paths.cache_dir": cfg.paths.cache_dir}
    )
    device = resolve_device(cfg.device)
    model = load_models(cfg.ckpt, device) if cfg.ckpt is not None else None
    if cfg.get("data") is None:
        if model is None:
            raise ValueError(
                "samples=... needs the reference dataset: add data=<option> (e.g. data=mnist)"
            )
        with open_dict(cfg):  # the reference data is the checkpoint's training data
            cfg.data = model.config.data

    if model is not None and (differ := differs_from_run(cfg.evaluator, model.config)):
        log.warning(
            "the run evaluated itself in training with other settings (%s), so its eval/* metrics "
            "do not compare with these; to score it as it did, add: %s",
            ", ".join(f"{key} {ours!r} here" for key, ours, _ in differ),
            " ".join(f"evaluator.{key}={theirs}" for key, _, theirs in differ),
        )
    media = model.media if model is not None else media_of(cfg.data)
    check_evaluator(cfg.evaluator, media)
    # The extractor and the reference first: a missing weight file fails before any sampling.
    evaluator = instantiate(cfg.evaluator)
    evaluator.setup(device)
    if model is not None:
        images, info = _generate(cfg, model)
    else:
        images, info = _load_samples(cfg.samples, cfg.n, media), {"samples": str(cfg.samples)}
    start = time.perf_counter()
    results = evaluator(images, seed=cfg.seed)
    info["feature_images_per_sec"] = len(images) / (time.perf_counter() - start)
    report = {"metrics": results, "n": len(images), "seed": cfg.seed, **info, **evaluator.info}

    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    print(f"wrote {quoted(out)}")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
