"""Latent diffusion: the tiny autoencoder that difftrain trains, diffusers' AutoencoderKL, and
runs that train on cached latents and decode their samples. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difftrain.cli.train import train
from difftrain.evaluation.alignment import JUDGED
from difftrain.latent.autoencoders import TinyAutoencoder, TinyKL
from difftrain.runs.pretrained import load_trained
from tests.conftest import TEXT, compose_cfg

LATENT_NET = ["net.channels=16", "net.head_channels=16", "net.norm_groups=4"]


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory) -> Path:
    """An autoencoder trained by difftrain-autoencoder for a few steps on captioned digits."""
    from difftrain.cli.autoencoder import train_autoencoder

    out = tmp_path_factory.mktemp("ae") / "captioned.pt"
    cfg = compose_cfg(
        out.parent, "data.dataset.max_glyphs=200", "steps=30", f"out={out}", "channels=16",
        "judge_min_accuracy=0", "floor=null", config_name="autoencoder_train",
    )  # fmt: skip
    result = train_autoencoder(cfg)
    assert out.is_file() and 0 < result["val_l1"] < 1 and result["scaling_factor"] > 0
    # what the latents keep of each prompted attribute, next to the judge on the real images
    # (a judge of 400 images is weak: only the report is checked here, not its values)
    judged = {f"{kind}_{a}" for kind in ("judged", "judged_real") for a in JUDGED}
    assert judged <= result.keys() and all(0 <= result[k] <= 1 for k in judged)
    return out


def test_an_autoencoder_below_the_floor_trains_on_then_fails_with_its_figures(tmp_path, caplog):
    """A floor no reconstruction reaches (digit above 1.5 x the real images'): two more stretches
    up to max_steps, then the file is saved, marked, and refused; loading it warns."""
    import logging

    from difftrain.cli.autoencoder import train_autoencoder
    from difftrain.errors import ConfigError

    out = tmp_path / "weak.pt"
    cfg = compose_cfg(
        tmp_path, "data.dataset.max_glyphs=200", "steps=10", "extra_steps=5", "max_steps=20",
        f"out={out}", "channels=16", "judge_min_accuracy=0", "floor={digit: 1.5}",
        config_name="autoencoder_train",
    )  # fmt: skip
    caplog.set_level(logging.INFO)
    with pytest.raises(
        ConfigError, match=r"still below the floor after 20 steps: digit .* of the real"
    ):
        train_autoencoder(cfg)
    assert caplog.text.count("below the floor") >= 2  # after 10 and 15 steps it trained on
    saved = torch.load(out, weights_only=True)
    assert saved["steps"] == 20 and saved["below_floor"][0].startswith("digit")
    caplog.clear()
    TinyAutoencoder(str(out))
    assert "below the floor (digit" in caplog.text


def test_tiny_kl_maps_images_to_a_quarter_size_and_back():
    net = TinyKL(3, 16, 4)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, logvar = net.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 8, 8)
    assert net.decode(mean).shape == x.shape
    loss, rec, kl = net.loss(x, kl_weight=1e-6)
    assert torch.isfinite(loss) and rec > 0 and kl >= 0


def test_the_trained_autoencoder_loads_scaled_and_frozen(tiny_autoencoder):
    ae = TinyAutoencoder(str(tiny_autoencoder))
    assert not any(p.requires_grad for p in ae.parameters())
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (4, 4, 8, 8) and ae.decode(z).shape == x.shape
    assert ae.fingerprint() == TinyAutoencoder(str(tiny_autoencoder)).fingerprint()


def test_a_missing_autoencoder_says_how_to_train_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="difftrain-autoencoder data=..."):
        TinyAutoencoder(str(tmp_path / "none.pt"))


def latent_run(tmp_path, *overrides):
    cfg = compose_cfg(
        tmp_path, *TEXT, "experiment=captioned_digits_latent", *LATENT_NET,
        "callbacks.alignment=null", "trainer.max_time=null", *overrides,
    )  # fmt: skip
    cfg.paths.cache_dir = str(tmp_path / "cache")
    train(cfg)
    return tmp_path / "run"


def test_a_latent_run_trains_on_cached_latents_and_decodes_its_samples(tiny_autoencoder, tmp_path):
    run = latent_run(tmp_path, f"autoencoder.path={tiny_autoencoder}")
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert {p.name.split("-")[0] for p in (tmp_path / "cache" / "latents").glob("*.pt")} == {
        "train", "val"
    }  # fmt: skip
    from PIL import Image

    grid = Image.open(next((run / "samples").glob("step_*.png")))
    assert grid.mode == "RGB" and grid.size == (6 * 34 + 2,) * 2  # decoded: 6x6 of 32x32 RGB
    model = load_trained(run / "checkpoints" / "last.ckpt")
    assert model.shape == (4, 8, 8)  # the net's: latents
    images, _ = model.generate(2, prompts=["a red seven on a gray background"], guidance=2.0)
    assert images.shape == (2, 3, 32, 32)  # decoded
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any("autoencoder" in k for k in ckpt["state_dict"])  # rebuilt from the config


def test_the_latent_cache_key_is_the_same_in_every_process():
    """The key describes the dataset config without the function's address, which another
    process has elsewhere: a later run finds the latents an earlier one encoded."""
    from functools import partial

    from difftrain.data.datamodule import described

    def made():  # a new function object each call, at a new address, as in a new process
        def captioned_digits(split, root):
            return split, root

        return captioned_digits

    one, other = made(), made()
    assert repr(one) != repr(other)
    assert described(partial(one, root="data")) == described(partial(other, root="data"))
    assert described(partial(one, root="data")) != described(partial(other, root="elsewhere"))


def test_a_net_that_does_not_take_the_latents_is_refused_with_the_fix(tiny_autoencoder, tmp_path):
    ae = f"autoencoder.path={tiny_autoencoder}"
    with pytest.raises(ValueError, match=r"latents\): set data.sample_shape=\[4,8,8\]"):
        latent_run(tmp_path, ae, "data.sample_shape=[3,8,8]")
    with pytest.raises(ValueError, match=r"set data.sample_shape=\[4,8,8\]"):
        latent_run(tmp_path, ae, "net.sample_shape=[3,8,8]")


def test_sd_from_scratch_runs_at_tiny_size_with_random_vae_and_clip(tmp_path, clip_dir):
    """experiment=sd_from_scratch, shrunk: a random AutoencoderKL and CLIP saved as SD lays them out."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL

    sd = tmp_path / "sd"
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, layers_per_block=1,
    ).save_pretrained(sd / "vae")  # fmt: skip
    for sub in ("text_encoder", "tokenizer"):
        (sd / sub).symlink_to(clip_dir, target_is_directory=True)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i, caption in enumerate(["a red square", "a blue circle", "a green square on white"] * 4):
        Image.new("RGB", (20, 20), ("red", "blue", "green")[i % 3]).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(caption)
    cfg = compose_cfg(
        tmp_path, "experiment=sd_from_scratch", f"data.dataset.root={images}", "data.image_size=16",
        "data.batch_size=4", "data.val_batch_size=4", "data.num_workers=0",
        "data.dataset.val_fraction=0.25", f"autoencoder.path={sd}", f"text_encoder.path={sd}",
        "data.sample_shape=[4,8,8]", "net.channels=16", "net.head_channels=16", "net.norm_groups=4",
        "net.channel_mult=[1,2]", "net.cross_attn_resolutions=[8,4]", "trainer=cpu",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "sampler.steps=2", "logger=none",
        "~callbacks.progress_bar", "callbacks.sample_grid.num_samples=2",
    )  # fmt: skip
    cfg.paths.cache_dir = str(tmp_path / "cache")
    train(cfg)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
    model = load_trained(tmp_path / "run" / "checkpoints" / "last.ckpt")
    images, _ = model.generate(1, prompts=["a red square"])
    assert images.shape == (1, 3, 16, 16)
