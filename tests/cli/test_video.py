"""Video through the whole template: a clip run trains, checkpoints, samples clips with an
animated grid, is scored by the video evaluator, resumes exactly, and starts from an image run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from difftrain.cli.eval import evaluate
from difftrain.cli.sample import sample
from difftrain.cli.train import train
from difftrain.runs.pretrained import load_trained
from tests.conftest import compose_cfg

# moving_digits shrunk to seconds: 4 frames of 16x16 (8 px glyphs), the tiny space-time UNet.
CLIPS = [
    "experiment=moving_digits", "net=unet3d_tiny", "net.patch_size=1", "net.given_frames=false",
    "data.frames=4", "data.image_size=16",
    "data.dataset.clips={train:64,val:16}", "data.batch_size=8", "data.val_batch_size=8",
    "trainer.max_time=null", "trainer.max_steps=4", "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1", "trainer.accelerator=cpu", "trainer.precision=32-true",
    "sampler.steps=3", "callbacks.sample_grid.num_samples=4", "~callbacks.evaluate",
    "~callbacks.progress_bar", "logger=none",
]  # fmt: skip


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Path:
    cfg = compose_cfg(tmp_path_factory.mktemp("clips"), *CLIPS)
    train(cfg)
    return Path(cfg.paths.output_dir)


def test_a_clip_run_trains_and_draws_an_animated_grid(clip_run):
    summary = json.loads((clip_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["sample_grid"].endswith("step_0000004.gif")
    with Image.open(summary["sample_grid"]) as grid:
        assert grid.n_frames == 4
    assert (clip_run / "samples" / "step_0000004.png").is_file()  # the strip of frames
    model = load_trained(clip_run / "checkpoints" / "last.ckpt")
    assert model.shape == (1, 4, 16, 16) and model.media.key == "videos"


def test_difftrain_sample_writes_uint8_clips_and_eval_scores_them(clip_run, tmp_path):
    ckpt = clip_run / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(tmp_path, f"ckpt={ckpt}", "n=6", f"out={tmp_path / 'clips.npz'}",
                      "batch_size=4", config_name="sample")  # fmt: skip
    sample(cfg)
    saved = np.load(tmp_path / "clips.npz")
    assert saved["videos"].shape == (6, 4, 16, 16, 1) and saved["videos"].dtype == np.uint8
    assert (tmp_path / "clips.gif").is_file() and (tmp_path / "clips.png").is_file()
    first, _ = load_trained(ckpt).sample(6, batch_size=4)
    assert torch.equal(first, torch.from_numpy(saved["videos"]))  # as TrainedModel draws them
    scored = compose_cfg(
        tmp_path, f"samples={tmp_path / 'clips.npz'}", f"data.dataset.root={tmp_path}",
        "data=moving_digits", "data.frames=4", "data.image_size=16", "evaluator=video",
        "evaluator.frames.classifier_images=5000", "evaluator.frames.min_accuracy=0",
        "evaluator.max_reference_clips=16", "evaluator.clip_classifier_examples=1200",
        "evaluator.clip_classifier_min_accuracy=0",
        f"out={tmp_path / 'eval.json'}", config_name="eval",
    )  # fmt: skip
    scored.data.dataset.clips = {"train": 200, "val": 16}
    metrics = evaluate(scored)["metrics"]
    assert {"fid", "identity_consistency", "flicker_ratio", "speed_ratio", "clip_fd",
            "real_clip_fd"} <= set(metrics)  # fmt: skip
    images = compose_cfg(tmp_path, f"ckpt={ckpt}", "n=4", config_name="eval")
    with pytest.raises(Exception, match="evaluator=video"):
        evaluate(images)  # the image evaluator cannot score clips: says which can


def test_a_clip_run_resumes_exactly(clip_run, tmp_path):
    first = compose_cfg(tmp_path / "a", *CLIPS, "trainer.max_steps=2")
    train(first)
    resumed = compose_cfg(
        tmp_path / "b", *CLIPS, f"ckpt_path={first.paths.output_dir}/checkpoints/last.ckpt"
    )
    train(resumed)
    straight = torch.load(clip_run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    state = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt",
                       weights_only=False)["state_dict"]  # fmt: skip
    assert all(torch.equal(state[k], straight[k]) for k in straight)


def test_a_video_net_starts_as_an_image_run_frame_by_frame(tiny_checkpoint, tmp_path):
    unconditional = ["net.num_classes=0", "model.label_dropout=0"]
    cfg = compose_cfg(tmp_path, *CLIPS, *unconditional, f"model.init_from={tiny_checkpoint}")
    module = instantiate(cfg.model)
    image = load_trained(tiny_checkpoint).diffusion.denoiser.net
    clips = torch.randn(2, 1, 4, 16, 16)
    out = module.ema.module.net(clips, torch.tensor([0.5, -0.5]))
    for t in range(4):
        frame = image(clips[:, :, t], torch.tensor([0.5, -0.5]))
        assert (out[:, :, t] - frame).abs().max() < 1e-5 * frame.abs().max()  # a few steps: small
    bad = compose_cfg(tmp_path, *CLIPS, f"model.init_from={tmp_path / 'none.ckpt'}")
    with pytest.raises(Exception, match="model.init_from=.*cannot read"):
        instantiate(bad.model)


def test_freeze_init_trains_only_the_new_layers(tiny_checkpoint, tmp_path):
    unconditional = ["net.num_classes=0", "model.label_dropout=0", "trainer.max_steps=2",
                     "callbacks.sample_grid.guidance=1"]  # fmt: skip
    cfg = compose_cfg(tmp_path, *CLIPS, *unconditional, f"model.init_from={tiny_checkpoint}",
                      "model.freeze_init=true", "net.given_frames=true")  # fmt: skip
    train(cfg)
    image = torch.load(tiny_checkpoint, weights_only=False)["state_dict"]
    video = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
                       weights_only=False)["state_dict"]  # fmt: skip
    ema = "ema.module.net."  # what model.init_from loads
    loaded = [k[len(ema) :] for k in image if k.startswith(ema)]
    assert loaded and all(torch.equal(video[f"denoiser.net.{k}"], image[ema + k]) for k in loaded)
    assert video["denoiser.net.given_in.weight"].abs().sum() > 0  # new, from zero: it trained
    with pytest.raises(Exception, match="model.freeze_init=true keeps"):
        instantiate(compose_cfg(tmp_path, *CLIPS, "model.freeze_init=true").model)


def test_a_video_dit_trains_on_clips_and_draws_them(tmp_path):
    cfg = compose_cfg(tmp_path, *CLIPS, "net=video_dit_tiny", "trainer.max_steps=2",
                      "net.given_frames=true")  # fmt: skip
    train(cfg)
    model = load_trained(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert model.shape == (1, 4, 16, 16) and any(model.diffusion.denoiser.net.temporal)
    clips, _ = model.sample(2, labels=[3, 4])
    assert clips.shape == (2, 4, 16, 16, 1) and clips.dtype == torch.uint8


def test_a_folder_of_video_files_trains_with_its_subfolders_as_classes(tmp_path):
    pytest.importorskip("av")
    folder = [o for o in CLIPS if not o.startswith("data.dataset.clips")]
    from tests.data.test_clips import write_video

    for name in ("left/1.mp4", "left/2.mp4", "left/3.mp4", "right/4.mp4", "right/5.mp4"):
        (tmp_path / "videos" / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(tmp_path / "videos" / name, 10, size=24)
    cfg = compose_cfg(
        tmp_path, *folder, "data=video_folder", "data.image_size=16", "data.channels=3",
        f"data.dataset.root={tmp_path / 'videos'}", "data.dataset.val_fraction=0.2",
        "data.dataset.stride=2", "trainer.max_steps=2", "data.batch_size=2", "data.val_batch_size=2",
    )  # fmt: skip
    assert cfg.data.num_classes == 2 and cfg.net.num_classes == 2
    train(cfg)
    model = load_trained(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert model.shape == (3, 4, 16, 16)
    clips, labels = model.sample(2, labels=torch.tensor([0, 1]))
    assert clips.shape == (2, 4, 16, 16, 3) and clips.dtype == torch.uint8
    missing = compose_cfg(
        tmp_path, *folder, "data=video_folder", f"data.dataset.root={tmp_path / 'no'}"
    )
    with pytest.raises(FileNotFoundError, match="data.dataset.root"):
        train(missing)


def test_a_net_given_frames_predicts_the_rest_and_gives_them_back_unchanged(tmp_path):
    from difftrain.errors import ConfigError

    cfg = compose_cfg(tmp_path / "run", *CLIPS, "net.given_frames=true")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    truth = torch.randint(0, 256, (5, 4, 16, 16, 1), dtype=torch.uint8)
    np.savez(tmp_path / "truth.npz", videos=truth.numpy())
    args = [f"ckpt={ckpt}", "n=5", f"context={tmp_path / 'truth.npz'}", "batch_size=2"]
    sample(compose_cfg(tmp_path, *args, "context_frames=2", f"out={tmp_path / 'p.npz'}",
                       config_name="sample"))  # fmt: skip
    predicted = torch.from_numpy(np.load(tmp_path / "p.npz")["videos"])
    assert torch.equal(predicted[:, :2], truth[:, :2]) and not torch.equal(predicted, truth)
    scores = json.loads((tmp_path / "p.prediction.json").read_text())
    assert scores["context_frames"] == [0, 1] and {"ssim", "psnr", "mse", "copy_last_ssim"} <= set(
        scores
    )
    sample(compose_cfg(tmp_path, *args, "context_frames=[0,3]", f"out={tmp_path / 'i.npz'}",
                       config_name="sample"))  # fmt: skip
    between = torch.from_numpy(np.load(tmp_path / "i.npz")["videos"])
    assert torch.equal(between[:, [0, 3]], truth[:, [0, 3]])
    sample(compose_cfg(tmp_path, f"ckpt={ckpt}", "n=3", "context=val", "context_frames=3",
                       f"out={tmp_path / 'v.npz'}", config_name="sample"))  # fmt: skip
    val = instantiate(load_trained(ckpt).config.data.dataset)("val")
    real = val.images[:3].permute(0, 2, 3, 4, 1)
    continued = np.load(tmp_path / "v.npz")
    assert torch.equal(torch.from_numpy(continued["videos"])[:, :3], real[:, :3])
    assert continued["labels"].tolist() == val.labels[:3].tolist()  # each clip as its own class
    for bad, match in [("context_frames=4", "give 1 to 3"), ("context_frames=null", "missing"),
                       ("n=6", "has 5 clips")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            sample(compose_cfg(tmp_path, *args, bad, config_name="sample"))


def test_a_net_without_given_frames_refuses_a_context(clip_run, tmp_path):
    from difftrain.errors import ConfigError

    truth = torch.zeros(2, 4, 16, 16, 1, dtype=torch.uint8)
    np.savez(tmp_path / "truth.npz", videos=truth.numpy())
    cfg = compose_cfg(tmp_path, f"ckpt={clip_run / 'checkpoints' / 'last.ckpt'}", "n=2",
                      f"context={tmp_path / 'truth.npz'}", "context_frames=1", config_name="sample")  # fmt: skip
    with pytest.raises(ConfigError, match="net.given_frames=true"):
        sample(cfg)
    np.savez(tmp_path / "images.npz", images=np.zeros((2, 16, 16, 1), np.uint8))
    cfg.context = str(tmp_path / "images.npz")
    with pytest.raises(ConfigError, match="cannot read clips"):
        sample(cfg)


def test_the_animated_grid_goes_to_wandb_as_a_video(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg(tmp_path, *[o for o in CLIPS if o != "logger=none"], "trainer.max_steps=2")
    train(cfg)
    videos = list(Path(cfg.paths.output_dir).rglob("media/videos/samples_*.gif"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0


def test_text_to_video_judges_digit_colour_and_direction_and_draws_prompts(tmp_path):
    text = [o for o in CLIPS if o not in ("experiment=moving_digits", "~callbacks.evaluate")]
    cfg = compose_cfg(
        tmp_path, *text, "experiment=moving_digits_text", "net.patch_size=1",
        "net.cross_attn_resolutions=[8]", "data.dataset.clips={train:120,val:48}",
        "callbacks.alignment.num_seen=6", "callbacks.alignment.num_per_held_out=2",
        "callbacks.alignment.judge_images=120", "callbacks.alignment.judge_epochs=1",
        "callbacks.alignment.judge_min_accuracy=0", "callbacks.alignment.num_reference=48",
        "callbacks.sample_grid.guidance=2",
    )  # fmt: skip
    train(cfg)
    run = Path(cfg.paths.output_dir)
    alignment = json.loads((run / "summary.json").read_text())["alignment"]
    assert {"digit", "colour", "direction", "all", "heldout_direction", "fid"} <= set(alignment)
    assert alignment["prompts"] == 6 + 3 * 2 and alignment["held_out_prompts"] == 6
    prompts = (run / "samples" / "step_0000004.txt").read_text().splitlines()
    assert " moving " in prompts[0]
    out = tmp_path / "red.npz"
    sample(compose_cfg(tmp_path, f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "n=2",
                       "prompt=a red three moving up", "guidance=2", f"out={out}",
                       config_name="sample"))  # fmt: skip
    drawn = np.load(out)
    assert drawn["videos"].shape == (2, 4, 16, 16, 3)
    assert list(drawn["prompts"]) == ["a red three moving up"] * 2
