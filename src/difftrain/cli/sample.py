"""difftrain-sample: draw images, clips or toy2d points from a checkpoint's EMA weights into an
npz, with a preview beside it (a PNG grid, an animated GIF grid, a scatter plot).

difftrain-sample ckpt=logs/train/runs/<run>/checkpoints/last.ckpt n=1000 out=samples.npz
difftrain-sample ckpt=... sampler=ddim sampler.steps=20 seed=1
difftrain-sample ckpt=<video run, net.given_frames=true> context=clips.npz context_frames=4
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from difftrain.config import CONFIG_DIR
from difftrain.console import Progress, quoted
from difftrain.data.images import SampleWriter
from difftrain.data.media import Images
from difftrain.diffusion.generate import check_given, class_labels
from difftrain.diffusion.samplers import Sampler
from difftrain.errors import ConfigError
from difftrain.runs.preflight import check_values, check_writable, exit_on_bad_input, raise_problems
from difftrain.runs.pretrained import TrainedModel, load_guide, load_models
from difftrain.runtime import resolve_device


def sample(cfg: DictConfig) -> Path:
    """Write cfg.n samples to cfg.out, plus a grid PNG beside it.

    format=npz: uint8 (N, H, W, C) under `images` (and nfe, seed, step, labels); format=png: a
    folder of 000000.png, 000001.png, ... for external evaluators (ADM's evaluator, clean-fid).
    Video checkpoints: uint8 clips (N, T, H, W, C) under `videos`, an animated grid (.gif) and a
    strip of frames (.png) beside. Low-dimensional (toy2d) checkpoints: float points (N, D) under
    `points`, a scatter plot beside.
    With `context` (an npz of clips) and `context_frames`, a video checkpoint trained with given
    frames predicts the rest of each clip (the given frames come back unchanged) and the
    prediction is scored against the true frames (`<out>.prediction.json`).
    Sampling stopped (SIGTERM, Ctrl-C) or failed part-way leaves the samples drawn so far.
    """
    check_arguments(
        cfg, outputs={"out": Path(cfg.out).absolute().parent}, problems=output_problems(cfg)
    )
    prompts = read_prompts(cfg)
    model = load_models(cfg.ckpt, resolve_device(cfg.device))
    if prompts is not None:
        check_prompts(model, prompts)
    media = model.media
    if cfg.format not in media.formats:
        raise ConfigError(
            f"format={cfg.format} cannot hold {media.key}, which this checkpoint draws: use "
            f"format={media.formats[0]}"
        )
    context = read_context(cfg, model)
    requested = cfg.class_labels
    if (
        requested is None
        and context is not None
        and context.labels is not None
        and model.num_classes
    ):
        requested = context.labels.tolist()  # each clip continued as its own class
    batches, sampler, labels = draw_batches(cfg, model, requested, prompts=prompts, context=context)
    drawn: list[torch.Tensor] = []
    if context is not None:  # kept for the prediction scores
        batches = ((drawn.append(x) or x, nfe) for x, nfe in batches)
    per_sample = {} if labels is None else {"labels": labels.numpy()}
    if prompts:
        per_sample["prompts"] = np.array([prompts[i % len(prompts)] for i in range(cfg.n)])
    writer = open_writer(cfg, media, per_sample)
    writer.extra.update(seed=np.array(cfg.seed), step=np.array(model.global_step))
    nfe = keep_drawing(writer, batches, cfg.n)
    out = writer.write()
    preview = media.preview(
        writer.head(media.preview_size(cfg.grid_size)), Path(cfg.out).with_suffix(".png")
    )
    print(
        f"wrote {cfg.n} {media.key} ({len(sampler.levels or ()) or sampler.steps} steps, NFE "
        f"{nfe}) to {quoted(out)} and "
        f"a preview to {quoted(preview)}"
    )
    if context is not None:
        write_prediction_scores(cfg, media, torch.cat(drawn), context)
    return out


class Context(NamedTuple):
    """The clips given to a prediction: model-range clips (n, *shape), the frames given (n, T),
    the true clips as stored (uint8 (n, T, H, W, C)) and their class labels (n,), where known."""

    clips: torch.Tensor
    frame_mask: torch.Tensor
    stored: torch.Tensor
    labels: torch.Tensor | None = None


def read_context(cfg: DictConfig, model: TrainedModel) -> Context | None:
    """The first cfg.n clips of the npz `context` (`videos`, as difftrain-sample writes them),
    given at `context_frames` (k: the first k frames; a list: those frames); None without one."""
    if not cfg.get("context"):
        if cfg.get("context_frames") is not None:
            raise ConfigError(
                "context_frames= names the frames of context=<npz of clips>: give both"
            )
        return None
    media, shape = model.media, model.shape
    stored, labels = validation_clips(model) if cfg.context == "val" else read_clips(cfg.context)
    expected = (shape[1], *shape[2:], shape[0])  # (T, H, W, C)
    if media.key != "videos" or tuple(stored.shape[1:]) != expected or stored.dtype != torch.uint8:
        raise ConfigError(
            f"context={cfg.context} holds {stored.dtype} {tuple(stored.shape)}, but this "
            f"checkpoint draws clips (N, {', '.join(map(str, expected))}) of uint8"
        )
    if not getattr(model.diffusion.denoiser.net, "given_frames", False):
        raise ConfigError(
            f"context={cfg.context}: this checkpoint's net was not trained to read given frames. "
            "Fix: train a video run with net.given_frames=true (README, Video: prediction)"
        )
    if len(stored) < cfg.n:
        raise ConfigError(f"context={cfg.context} has {len(stored)} clips: set n<={len(stored)}")
    frames, given = shape[1], cfg.get("context_frames")
    if given is None:
        raise ConfigError(
            f"context_frames= is missing: k (the first k of {frames} frames) or a list"
        )
    index = list(range(int(given))) if isinstance(given, int) else [int(t) for t in given]
    if not index or min(index) < 0 or max(index) >= frames or len(set(index)) >= frames:
        raise ConfigError(
            f"context_frames={given}: give 1 to {frames - 1} of the frames 0..{frames - 1}"
        )
    stored = stored[: cfg.n]
    mask = torch.zeros(cfg.n, frames, dtype=torch.bool)
    mask[:, index] = True
    clips = media.normalize(media.from_stored(stored).float() / 255)
    return Context(clips, mask, stored, None if labels is None else labels[: cfg.n])


def read_clips(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The uint8 clips (N, T, H, W, C) under `videos` in the npz at `path`, and their `labels`
    where it has them."""
    try:
        with np.load(path) as archive:
            labels = torch.from_numpy(archive["labels"]) if "labels" in archive else None
            return torch.from_numpy(archive["videos"]), labels
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(
            f"context={path}: cannot read clips there ({type(e).__name__}: {e}). Fix: an npz "
            "with uint8 `videos` (N, T, H, W, C), as difftrain-sample writes, or context=val"
        ) from None


def validation_clips(model: TrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation clips of the checkpoint's own dataset (its saved config), as stored, and
    their labels."""
    dataset = model.config.data.get("dataset")
    if dataset is None or model.media.key != "videos":
        raise ConfigError("context=val reads a video run's validation clips: give an npz instead")
    try:
        val = instantiate(dataset)("val")
    except (OSError, ValueError) as e:
        raise ConfigError(f"context=val: cannot load the run's validation clips ({e})") from None
    clips = val.images  # uint8 (N, C, T, H, W)
    return clips.permute(0, *range(2, clips.ndim), 1), val.labels  # channels last, as stored


def write_prediction_scores(
    cfg: DictConfig, media, predicted: torch.Tensor, context: Context
) -> None:
    """Score the predicted frames against the context's true ones (SSIM, PSNR, MSE and the
    copy-last-frame baseline's), print them and write them beside cfg.out as JSON."""
    from difftrain.evaluation.video import prediction_scores

    scores = prediction_scores(
        media.from_stored(predicted), media.from_stored(context.stored), context.frame_mask
    )
    path = Path(cfg.out).with_suffix(".prediction.json")
    given = context.frame_mask[0].nonzero().flatten().tolist()
    path.write_text(json.dumps({"context_frames": given, **scores}, indent=2) + "\n")
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    print(f"prediction of the frames not given: {shown} (in {quoted(path)})")


def open_writer(cfg: DictConfig, media: Images, per_sample: dict[str, np.ndarray]) -> SampleWriter:
    """The writer of cfg.out, created now: an output that cannot be written fails here, before
    any sampling, with the reason."""
    try:
        return SampleWriter(cfg.out, cfg.format, media, per_sample, head=cfg.grid_size)
    except OSError as e:
        raise ConfigError(
            f"out={cfg.out}: cannot write there ({e.strerror or e}). Fix: out=<a path you can write>"
        ) from None


class Terminated(BaseException):
    """SIGTERM arrived while sampling (a scheduler's stop, `kill`)."""


def keep_drawing(writer: SampleWriter, batches: Iterator[tuple[torch.Tensor, int]], n: int) -> int:
    """Draw every batch into `writer`, and return the NFE. Stopped by SIGTERM or Ctrl-C, or failed,
    part-way: write the samples drawn so far, say how many, and exit (143 or 130) or re-raise."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    nfe = 0
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        for batch, nfe in batches:
            writer.extra["nfe"] = np.array(nfe)
            writer.add(batch)
    except BaseException as e:
        if writer.count == 0:
            writer.discard()
            raise
        how = {Terminated: "stopped by SIGTERM", KeyboardInterrupt: "stopped by Ctrl-C"}
        stop = how.get(type(e), f"failed ({type(e).__name__}: {e})")
        out = quoted(writer.write())
        print(f"{stop} after {writer.count} of {n} samples: wrote those {writer.count} to {out}")
        if isinstance(e, Terminated | KeyboardInterrupt):
            raise SystemExit(143 if isinstance(e, Terminated) else 130) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return nfe


def read_prompts(cfg: DictConfig) -> list[str] | None:
    """`prompt`, or the lines of the file `prompts` (blank lines skipped), or None."""
    if cfg.get("prompt") and cfg.get("prompts"):
        raise ConfigError("give prompt= or prompts= (a file), not both")
    if cfg.get("prompt"):
        return [str(cfg.prompt)]
    if not cfg.get("prompts"):
        return None
    path = Path(cfg.prompts)
    if not path.is_file():
        raise ConfigError(f"prompts={cfg.prompts}: no such file (one prompt per line)")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"prompts={cfg.prompts} has no prompt (one per line)")
    return lines


def check_prompts(model: TrainedModel, prompts: list[str]) -> None:
    """Fail, naming the problem, on prompts the checkpoint cannot read, before drawing."""
    tokenizer = getattr(model.diffusion.denoiser.net, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("this checkpoint reads no text: drop prompt=/prompts=")
    try:
        tokenizer.encode(prompts)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def output_problems(cfg: DictConfig) -> list[str]:
    """`format` and the name `out` it writes to: an .npz archive, or a folder of PNGs; the grid
    goes beside either as `out` with the suffix .png."""
    out = Path(cfg.out)
    if cfg.format == "npz" and out.suffix != ".npz":
        return [
            f"out={cfg.out}: format=npz writes an .npz archive (its grid beside it as a .png). "
            f"Fix: out={out.with_suffix('.npz')}, or format=png for a folder of PNGs"
        ]
    if cfg.format == "png" and out.suffix in (".png", ".npz"):
        return [
            f"out={cfg.out}: format=png writes a folder of PNGs (and its grid beside it as "
            f"{out.with_suffix('.png')}). Fix: out={out.with_suffix('')}, a folder's name"
        ]
    if cfg.format not in ("npz", "png"):
        return [f"format={cfg.format!r}: must be npz or png"]
    return []


def check_arguments(
    cfg: DictConfig, outputs: dict[str, Path], problems: Sequence[str] = ()
) -> None:
    """Fail on bad arguments (and `problems` found by the caller), missing checkpoints and
    unwritable outputs before loading or sampling anything."""
    ckpts = None if OmegaConf.is_missing(cfg, "ckpt") else cfg.get("ckpt")
    files = [("guide", cfg.get("guide"))] + [
        ("ckpt", path) for path in (ckpts if OmegaConf.is_list(ckpts) else [ckpts])
    ]
    missing = [
        f"{key}={path}: no such file. Fix: point {key} at a checkpoint, e.g. "
        "<run dir>/checkpoints/last.ckpt"
        for key, path in files
        if path is not None and not Path(path).is_file()
    ]
    raise_problems(
        [*problems, *check_values(cfg), *missing, *check_writable(**outputs)], "these arguments"
    )


def sampler_config(cfg: DictConfig, model: TrainedModel) -> DictConfig:
    """cfg's sampler; the run's own without one, or changed by one without a `_target_`
    (+sampler.steps=20: the run's own sampler with 20 steps)."""
    chosen = cfg.get("sampler")
    if not chosen:
        return model.config.sampler
    return chosen if "_target_" in chosen else OmegaConf.merge(model.config.sampler, chosen)


def draw_batches(
    cfg: DictConfig,
    model: TrainedModel,
    requested_labels: Sequence[int] | None,
    prompts: Sequence[str] | None = None,
    context: Context | None = None,
) -> tuple[Iterator[tuple[torch.Tensor, int]], Sampler, torch.Tensor | None]:
    """cfg.n samples with cfg's sampler (else the run's), seed, batch size and guidance (by
    cfg.guide's checkpoint where there is one), a batch at a time as they are drawn (with
    progress), as files store them (`model.media.stored`: uint8 images (B, H, W, C), clips
    (B, T, H, W, C), points (B, D)), each with the NFE; also the sampler and the class labels
    of all n."""
    sampler = instantiate(sampler_config(cfg, model))
    guide = load_guide(cfg.guide, model) if cfg.get("guide") else None
    given = {}
    if context is not None:  # the clips' frames (n, T) -> a mask (n, 1, T, 1, 1) over them
        given = {"given": context.clips, "given_mask": context.frame_mask[:, None, :, None, None]}
    try:
        model.diffusion.check_guidance(cfg.guidance, guide)
        if context is not None:
            check_given(given["given"], given["given_mask"], cfg.n, model.shape)
    except ValueError as e:  # the arguments' fault: a message, not a traceback
        raise ConfigError(str(e)) from None
    batches = model.batches(
        cfg.n, sampler, seed=cfg.seed, batch_size=cfg.batch_size,
        labels=requested_labels, prompts=prompts, guidance=cfg.guidance, guide=guide, **given,
    )  # fmt: skip
    prior = model.diffusion.class_prior
    labels = class_labels(cfg.n, model.num_classes, requested_labels, prior=prior)
    return _reported(batches, cfg.n, "sampling"), sampler, labels


def _reported(
    batches: Iterator[tuple[torch.Tensor, int]], n: int, what: str
) -> Iterator[tuple[torch.Tensor, int]]:
    """The batches, saying every few seconds how many samples are drawn and how long is left."""
    progress = Progress(what, n, "samples")
    for batch, nfe in batches:
        progress.update(len(batch))
        yield batch, nfe
    progress.close()


def draw(
    cfg: DictConfig,
    model: TrainedModel,
    requested_labels: Sequence[int] | None,
    prompts: Sequence[str] | None = None,
) -> tuple[torch.Tensor, int, Sampler, torch.Tensor | None]:
    """`draw_batches`'s samples all at once: (N, ...), the NFE, the sampler and the labels."""
    batches, sampler, labels = draw_batches(cfg, model, requested_labels, prompts)
    drawn = list(batches)
    return torch.cat([x for x, _ in drawn]), drawn[-1][1], sampler, labels


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
@exit_on_bad_input
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
