"""difftrain-export: a run as a diffusers pipeline folder that diffusers loads and samples from,
drawing what difftrain-sample draws. Offline: the VAE and CLIP are tiny random models saved with
save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tests.conftest import TEXT, compose_cfg, run_module  # noqa: E402

PROMPTS = ["a red seven on a blue background", "an orange zebra"]  # the second: unseen words


def tiny_vae(folder: Path) -> Path:
    """A random AutoencoderKL with f=2: 32x32x3 images to 16x16x4 latents."""
    torch.manual_seed(0)
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, layers_per_block=1, sample_size=32,
    ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory, clip_dir) -> Path:
    """A 4-step text-to-image run of a diffusers UNet2DConditionModel in a random VAE's latent
    space, prompts read by the random tiny CLIP: Stable Diffusion's layout at tiny size."""
    from difftrain.cli.train import train

    tmp = tmp_path_factory.mktemp("sd_run")
    cfg = compose_cfg(
        tmp, *[o for o in TEXT if not o.startswith("net.")], "net=diffusers_unet", "~net.num_res_blocks",
        "~net.cross_attn_resolutions",
        "text_encoder=clip", f"text_encoder.path={clip_dir}", "autoencoder=kl",
        f"autoencoder.path={tiny_vae(tmp / 'vae')}", "data.sample_shape=[4,16,16]",
        "schedule=scaled_linear", "objective=eps", "noise_levels=uniform_t", "sampler=euler",
        "sampler.steps=6", "callbacks.alignment=null",
    )  # fmt: skip
    cfg.paths.cache_dir = str(tmp / "cache")
    train(cfg)
    return tmp / "run" / "checkpoints" / "last.ckpt"


def test_diffusers_loads_the_export_and_draws_what_difftrain_draws(sd_run, tmp_path):
    from difftrain.runs.pretrained import load_trained
    from difftrain.streams import seeded_noise

    out = tmp_path / "pipeline"
    result = run_module("difftrain.cli.export", f"ckpt={sd_run}", f"out={out}", cwd=tmp_path)
    assert "wrote a diffusers pipeline" in result.stdout
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (
        scheduler["beta_schedule"] == "scaled_linear" and scheduler["prediction_type"] == "epsilon"
    )

    model = load_trained(sd_run)
    ours, _ = model.sample(2, prompts=PROMPTS, guidance=3.0, seed=0)  # (2, 32, 32, 3) uint8
    pipeline = diffusers.DiffusionPipeline.from_pretrained(out)
    noise = seeded_noise(0, torch.arange(2), model.shape)  # difftrain-sample's initial noise
    theirs = pipeline(
        PROMPTS, num_inference_steps=6, guidance_scale=3.0, latents=noise, output_type="np"
    ).images  # (2, 32, 32, 3) in [0, 1]
    theirs = np.round(theirs * 255).astype(int)
    assert theirs.shape == ours.shape
    difference = np.abs(theirs - ours.numpy().astype(int))
    assert difference.max() <= 2, difference.max()  # uint8 levels
    assert ours.float().std() > 5  # not a blank image that any net would match


def test_difftrains_own_nets_export_as_a_pipeline_that_draws_what_difftrain_draws(
    tiny_text_run, tmp_path
):
    """A text-to-image run of difftrain's UNet and tiny text encoder, as a DifftrainPipeline."""
    from difftrain.runs.pipeline import DifftrainPipeline
    from difftrain.runs.pretrained import load_trained

    ckpt = tiny_text_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "pipeline"
    result = run_module("difftrain.cli.export", f"ckpt={ckpt}", f"out={out}", cwd=tmp_path)
    assert "wrote a diffusers pipeline" in result.stdout
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DifftrainPipeline"
    pipeline = DifftrainPipeline.from_pretrained(out)
    prompts = ["a red seven on a blue background", "a small green two"]
    theirs = pipeline(2, prompts=prompts, guidance=2.0, seed=3, output_type="pt")
    ours, _ = load_trained(ckpt).generate(2, prompts=prompts, guidance=2.0, seed=3)
    assert torch.equal(theirs, ours)
    assert pipeline(1, prompts=prompts[:1]).shape == (1, 32, 32, 3)


def test_a_run_of_no_exportable_shape_is_refused_with_what_it_has(tmp_path):
    from tests.conftest import _train_tiny

    ckpt = _train_tiny(tmp_path, "net=diffusers_transformer", "callbacks.evaluate=null")
    result = run_module("difftrain.cli.export", f"ckpt={ckpt}", f"out={tmp_path / 'p'}",
                        cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "writes Stable Diffusion's layout" in result.stderr
    assert "this run's net is difftrain.nets.diffusers.DiffusersTransformer" in result.stderr
    assert not (tmp_path / "p").exists()


def test_sd15_finetune_trains_every_unet_weight_of_a_local_sd_folder_and_exports(
    tmp_path, clip_dir
):
    """experiment=sd15_finetune on a tiny random SD folder (unet/, vae/, text_encoder/,
    tokenizer/, scheduler/): the pretrained UNet is loaded, fine-tuned and exported."""
    from difftrain.cli.train import train
    from difftrain.runs.export import export
    from difftrain.runs.pretrained import load_trained
    from tests.nets.test_diffusers import tiny_sd_unet

    sd = tiny_sd_unet(tmp_path / "sd")
    tiny_vae(sd / "vae")
    for sub in ("text_encoder", "tokenizer"):
        (sd / sub).symlink_to(clip_dir, target_is_directory=True)
    images = captioned_images(tmp_path / "images")
    cfg = compose_cfg(
        tmp_path, "experiment=sd15_finetune", f"net.path={sd}", f"data.dataset.root={images}",
        "data.image_size=16", "data.sample_shape=[4,8,8]", "data.batch_size=4",
        "data.val_batch_size=4", "data.num_workers=0", "data.dataset.val_fraction=0.25",
        "optimizer.lr=1e-3", "trainer=cpu", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "sampler.steps=2", "logger=none", "~callbacks.progress_bar",
        "callbacks.sample_grid.num_samples=2",
    )  # fmt: skip
    cfg.paths.cache_dir = str(tmp_path / "cache")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    tuned = load_trained(ckpt).diffusion.denoiser.net.model
    base = diffusers.UNet2DConditionModel.from_pretrained(sd / "unet")
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, tuned.get_parameter(n))]
    assert len(changed) == len(list(base.parameters()))  # a full fine-tune: every weight moved
    pipeline = diffusers.DiffusionPipeline.from_pretrained(export(ckpt, tmp_path / "out"))
    assert pipeline("a red square", num_inference_steps=2, output_type="np").images.shape == (
        1,
        16,
        16,
        3,
    )


def tiny_sd_pipeline(folder: Path, clip_dir: Path) -> Path:
    """A tiny random Stable Diffusion pipeline folder, as a downloaded one is laid out
    (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from tests.nets.test_diffusers import SD, tiny_sd_unet

    tiny_sd_unet(folder / "parts")
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    tokenizer.model_max_length = 40  # the tiny CLIP's positions
    diffusers.StableDiffusionPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(tiny_vae(folder / "parts" / "vae")),
        text_encoder=CLIPTextModel.from_pretrained(clip_dir), tokenizer=tokenizer,
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "parts" / "unet"),
        scheduler=diffusers.PNDMScheduler.from_config(SD), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder / "sd")  # fmt: skip
    return folder / "sd"


def captioned_images(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, caption in enumerate(["a red square", "a blue circle", "a green square on white"] * 4):
        Image.new("RGB", (20, 20), ("red", "blue", "green")[i % 3]).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    return folder


PRIOR = ["prior=dreambooth", "model.prior_preservation.class_prompt='a square'",
         "model.prior_preservation.num_images=4"]  # fmt: skip


def lora_run(sd: Path, images: Path) -> list[str]:
    """experiment=sd15_lora at tiny size on a tiny SD folder."""
    return [
        "experiment=sd15_lora", f"net.path={sd}", f"data.dataset.root={captioned_images(images)}",
        "data.image_size=16", "data.sample_shape=[4,8,8]", "data.batch_size=4",
        "data.val_batch_size=4", "data.num_workers=0", "data.dataset.val_fraction=0.25",
        "optimizer.lr=3e-2", "ema=warmup", "trainer=cpu", "trainer.val_check_interval=2",
        "sampler.steps=4", "logger=none", "~callbacks.progress_bar",
        "callbacks.sample_grid.num_samples=2", "model.lora.dropout=0.1",
    ]  # fmt: skip


def test_a_lora_run_keeps_its_adapters_alone_and_diffusers_loads_them(tmp_path, clip_dir):
    """experiment=sd15_lora on a tiny random SD pipeline folder: only the adapters train and are
    checkpointed; exported in diffusers' LoRA format, load_lora_weights draws what difftrain
    draws, and other base weights under the adapters are refused."""
    from difftrain.cli.train import train
    from difftrain.diffusion.scheduler_config import scheduler_config
    from difftrain.errors import ConfigError
    from difftrain.runs.export import export
    from difftrain.runs.pretrained import load_checkpoint, load_trained
    from difftrain.streams import seeded_noise

    sd = tiny_sd_pipeline(tmp_path, clip_dir)
    cfg = compose_cfg(tmp_path, *lora_run(sd, tmp_path / "images"), "trainer.max_steps=4",
                      "callbacks=phema", "callbacks.posthoc_ema.snapshot_every=2", *PRIOR)  # fmt: skip
    cfg.paths.cache_dir = str(tmp_path / "cache")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = load_checkpoint(ckpt)["state_dict"]
    weights = [k for k in state if k.startswith(("denoiser.", "ema.module."))]
    assert weights and all(".lora_" in k for k in weights)  # the adapters and their EMA alone

    # DreamBooth's class images: the base model's (the adapters start at zero), drawn before
    # step 1, carried by the checkpoint.
    from hydra.utils import instantiate

    base_cfg = compose_cfg(tmp_path / "base", *lora_run(sd, tmp_path / "base" / "images"), *PRIOR)
    base, _ = instantiate(base_cfg.model).diffusion.generate(4, prompts=["a square"], guidance=3.0)
    torch.testing.assert_close(state["prior.images"], base, rtol=1e-4, atol=1e-4)
    assert bool(state["prior.drawn"])

    from difftrain.cli.phema import phema

    snapshot = torch.load(sorted((tmp_path / "run" / "phema").glob("*.pt"))[-1])
    assert all(".lora_" in k for k in snapshot["profiles"][0])  # post-hoc EMA: of the adapters
    assert load_trained(phema(tmp_path / "run", [0.1])[0]).global_step == 4

    out = export(ckpt, tmp_path / "lora")
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    model = load_trained(ckpt)
    prompts, noise = ["a red square", "a blue zebra"], seeded_noise(0, torch.arange(2), (4, 8, 8))
    ours, _ = model.generate(2, prompts=prompts, guidance=2.0, seed=0)
    ours = ((ours + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    pipeline = diffusers.DiffusionPipeline.from_pretrained(sd)
    schedule = {**cfg.schedule, "base_resolution": None}
    pipeline.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        scheduler_config(schedule, "eps")
    )

    def draw(output_type: str = "np"):
        return pipeline(prompts, num_inference_steps=4, guidance_scale=2.0, latents=noise,
                        output_type=output_type).images  # fmt: skip

    base = draw("latent")
    pipeline.load_lora_weights(out)
    assert np.abs(draw() - ours).max() < 2e-3
    assert (draw("latent") - base).abs().max() > 0.1  # the adapters matter

    unet = diffusers.UNet2DConditionModel.from_pretrained(sd / "unet")
    with torch.no_grad():
        unet.conv_in.weight.add_(0.1)
    unet.save_pretrained(sd / "unet")
    with pytest.raises(ConfigError, match="LoRA adapters trained on other pretrained weights"):
        load_trained(ckpt)


@pytest.mark.slow
def test_a_resumed_lora_run_with_prior_preservation_ends_with_the_same_adapters(tmp_path, clip_dir):
    """Stopped at step 2 of 4 (adapter dropout on, DreamBooth's class images mixed in), resumed
    from its adapters-only checkpoint, which carries the class images."""
    from difftrain.cli.train import train

    sd = tiny_sd_pipeline(tmp_path, clip_dir)

    def last(name: str, *overrides: str) -> dict:
        cfg = compose_cfg(tmp_path / name, *lora_run(sd, tmp_path / name / "images"), *overrides)
        cfg.paths.cache_dir = str(tmp_path / "cache")
        train(cfg)
        ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    straight = last("straight", "trainer.max_steps=4", *PRIOR)
    last("first", "trainer.max_steps=2", *PRIOR)
    first = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    state = last("resumed", "trainer.max_steps=4", f"ckpt_path={first}", *PRIOR)
    assert state.keys() == straight.keys()
    assert all(torch.equal(state[k], straight[k]) for k in state)
