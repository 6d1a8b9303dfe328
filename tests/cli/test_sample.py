"""difftrain-sample: npz and grid from a checkpoint alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from difftrain.diffusion.generate import class_labels
from difftrain.runs.pretrained import load_trained
from tests.conftest import run_module


def test_sample_cli_writes_uint8_npz_and_grid(tiny_checkpoint, tmp_path):
    out = tmp_path / "s" / "samples.npz"
    result = run_module(
        "difftrain.cli.sample",
        f"ckpt={tiny_checkpoint}",
        "n=10",
        f"out={out}",
        "sampler=ddim",
        "sampler.steps=3",
        "seed=1",
        cwd=tmp_path,
    )
    assert "NFE 3" in result.stdout
    data = np.load(out)
    assert data["images"].dtype == np.uint8 and data["images"].shape == (10, 16, 16, 1)
    assert int(data["nfe"]) == 3 and int(data["step"]) == 4
    assert Image.open(out.with_suffix(".png")).size == (4 * 18 + 2, 3 * 18 + 2)
    assert not list(tmp_path.glob("outputs")) and not (tmp_path / ".hydra").exists()


def test_png_export(tiny_checkpoint, tmp_path):
    out = tmp_path / "pngs"
    run_module(
        "difftrain.cli.sample",
        f"ckpt={tiny_checkpoint}",
        "n=3",
        f"out={out}",
        "format=png",
        cwd=tmp_path,
    )
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["000000.png", "000001.png", "000002.png"]
    assert np.asarray(Image.open(files[0])).shape == (16, 16)


def test_class_labels_and_guidance(tiny_conditional_checkpoint, tmp_path):
    out = tmp_path / "cond.npz"
    args = [
        f"ckpt={tiny_conditional_checkpoint}",
        "n=5",
        f"out={out}",
        "sampler=heun",
        "sampler.steps=3",
    ]
    run_module("difftrain.cli.sample", *args, "class_labels=[3,7]", "guidance=2.0", cwd=tmp_path)
    data = np.load(out)
    assert data["labels"].tolist() == [3, 7, 3, 7, 3] and int(data["nfe"]) == 5
    assert data["images"].shape == (5, 16, 16, 1)


def test_class_labels_on_an_unconditional_checkpoint_fail(tiny_checkpoint):
    with pytest.raises(ValueError, match="unconditional"):
        class_labels(4, num_classes=0, requested=[3])
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 9\]"):
        class_labels(4, num_classes=10, requested=[12])
    assert class_labels(12, num_classes=10).tolist() == [*range(10), 0, 1]
    assert class_labels(3, num_classes=10, start=9).tolist() == [9, 0, 1]  # another share
    with pytest.raises(ValueError, match="unconditional"):
        load_trained(tiny_checkpoint).sample(2, labels=[3])


def test_checkpoint_restores_the_ema_weights_and_training_sampler(tiny_checkpoint):
    model = load_trained(tiny_checkpoint)
    state = torch.load(tiny_checkpoint, weights_only=False)["state_dict"]
    torch.testing.assert_close(
        model.diffusion.denoiser.net.conv_in.weight, state["ema.module.net.conv_in.weight"]
    )
    assert model.diffusion.sampler.steps == 4 and model.shape == (1, 16, 16)


def test_missing_or_foreign_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trained(tmp_path / "nope.ckpt")
    from difftrain.errors import ConfigError  # what the commands print without a traceback

    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="not a difftrain checkpoint"):
        load_trained(tmp_path / "other.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 half a zip archive")
    with pytest.raises(ConfigError, match="cannot be read .* cut short"):
        load_trained(tmp_path / "cut.ckpt")


def test_ensemble_averages_denoisers_and_rejects_other_architectures(
    tiny_checkpoint, tiny_conditional_checkpoint, tmp_path
):
    from difftrain.runs.pretrained import load_models

    single = load_models(tiny_checkpoint)
    pair = load_models([tiny_checkpoint, tiny_checkpoint])
    x, sigma = torch.randn(2, 1, 16, 16), torch.tensor(1.0)
    torch.testing.assert_close(
        pair.diffusion.denoiser(x, sigma), single.diffusion.denoiser(x, sigma)
    )
    with pytest.raises(ValueError, match=r"cannot ensemble .* their net differ"):
        load_models([tiny_checkpoint, tiny_conditional_checkpoint])
    out = tmp_path / "ens.npz"
    run_module(
        "difftrain.cli.sample",
        f"ckpt=[{tiny_checkpoint},{tiny_checkpoint}]",
        "n=2",
        f"out={out}",
        cwd=tmp_path,
    )
    assert np.load(out)["images"].shape == (2, 16, 16, 1)


def test_a_toy2d_checkpoint_samples_points_and_a_scatter_plot(tiny_multirun, tmp_path):
    ckpt = tiny_multirun / "0" / "checkpoints" / "last.ckpt"
    run_module("difftrain.cli.sample", f"ckpt={ckpt}", "n=50", "out=points.npz", cwd=tmp_path)
    saved = np.load(tmp_path / "points.npz")
    assert saved["points"].shape == (50, 2) and np.isfinite(saved["points"]).all()
    assert (tmp_path / "points.png").stat().st_size > 1000
    points, _ = load_trained(ckpt).sample(4)  # as the npz stores them
    assert points.shape == (4, 2) and points.dtype == torch.float32


def test_bad_arguments_fail_before_anything_is_drawn(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = {  # every problem is named at once, before the checkpoint is even loaded
        "n=-1": "n=-1: must be an integer in [1, inf)",
        f"out={blocker / 'x.npz'}": "is not a writable folder",
        "+sampler.steps=0": "sampler.steps=0: must be an integer in [1, inf)",
        "guide=nope.ckpt": "guide=nope.ckpt: no such file",
    }
    result = run_module(
        "difftrain.cli.sample", f"ckpt={tiny_checkpoint}", *bad, cwd=tmp_path, check=False
    )
    assert result.returncode == 1 and "Traceback (most recent call last)" not in result.stderr
    for message in bad.values():
        assert message in result.stderr, (message, result.stderr[-2000:])


def test_a_missing_checkpoint_is_named_without_a_traceback(tmp_path):
    for cli in ("difftrain.cli.sample", "difftrain.cli.eval"):
        result = run_module(cli, "ckpt=nope.ckpt", cwd=tmp_path, check=False)
        assert result.returncode != 0, cli
        assert "ckpt=nope.ckpt: no such file" in result.stderr, result.stderr[-500:]
        assert "Traceback (most recent call last)" not in result.stderr, cli


def test_plus_sampler_options_change_the_runs_own_sampler(tiny_checkpoint, tmp_path):
    out = tmp_path / "s.npz"
    result = run_module(
        "difftrain.cli.sample", f"ckpt={tiny_checkpoint}", "n=2", "+sampler.steps=3", f"out={out}",
        cwd=tmp_path,
    )  # fmt: skip
    assert "NFE 3" in result.stdout and int(np.load(out)["nfe"]) == 3


def test_autoguidance_by_a_guide_checkpoint(tiny_checkpoint, tiny_conditional_checkpoint, tmp_path):
    """guide= mixes in a weaker model's prediction, unconditional models included: guiding a
    model by itself changes nothing, by another model it does, and a guide of other data is
    refused. Without a guide, guidance on an unconditional model is refused (it would do
    nothing)."""
    from difftrain.runs.pretrained import load_guide

    model = load_trained(tiny_checkpoint)
    options = dict(seed=0, guidance=2.0)
    with pytest.raises(ValueError, match="unconditional model.*guide="):
        model.generate(3, **options)
    alone, _ = model.generate(3, seed=0)
    itself, _ = model.generate(3, guide=load_guide(tiny_checkpoint, model), **options)
    other, _ = model.generate(3, guide=load_guide(tiny_conditional_checkpoint, model), **options)
    torch.testing.assert_close(itself, alone)
    assert (other - alone).abs().max() > 1e-3
    model.config.data.value_range = [0.0, 1.0]
    with pytest.raises(ValueError, match="cannot guide with .* data.value_range"):
        load_guide(tiny_conditional_checkpoint, model)
    out = tmp_path / "guided.npz"
    run_module(
        "difftrain.cli.sample", f"ckpt={tiny_checkpoint}", f"guide={tiny_conditional_checkpoint}",
        "guidance=2", "n=2", f"out={out}", cwd=tmp_path,
    )  # fmt: skip
    assert np.load(out)["images"].shape == (2, 16, 16, 1)


def test_out_must_name_what_the_format_writes(tiny_checkpoint, tmp_path):
    """An npz archive ends in .npz and a PNG folder not in .png (its grid takes that name), so
    no file lands under a name the message does not give; guidance on an unconditional model
    without a guide is refused with the fix, not ignored."""
    from omegaconf import OmegaConf

    from difftrain.cli.sample import output_problems

    def problems(**options):
        return output_problems(OmegaConf.create(options))

    assert problems(out="a/s.npz", format="npz") == problems(out="a/dir", format="png") == []
    assert "Fix: out=s.npz" in problems(out="s.png", format="npz")[0]
    assert "Fix: out=s, a folder" in problems(out="s.png", format="png")[0]
    assert "Fix: out=samples, a folder" in problems(out="samples.npz", format="png")[0]  # default
    assert "must be npz or png" in problems(out="s.npz", format="jpg")[0]
    result = run_module(
        "difftrain.cli.sample", f"ckpt={tiny_checkpoint}", "guidance=2", "n=2",
        f"out={tmp_path / 's.npz'}", cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unconditional model" in result.stderr and "guide=<ckpt>" in result.stderr
    assert not (tmp_path / "s.npz").exists()


def test_a_stopped_sampler_keeps_what_it_drew(tiny_checkpoint, tmp_path):
    """SIGTERM part-way through n=100000: a valid npz of the samples drawn so far, labels cut to
    them, and a line saying how many; exit 143, as a preempted job."""
    import dataclasses
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "many.npz"
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "difftrain.cli.sample", f"ckpt={tiny_checkpoint}", "n=100000",
           "batch_size=16", "+sampler.steps=2", f"out={out}"]  # fmt: skip
    with open(log, "w") as f:
        process = subprocess.Popen(cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "sampling: 100000 samples" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)  # the model is loaded and sampling has begun
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143, log.read_text()[-3000:]
    kept = np.load(out)["images"]
    assert 0 < len(kept) < 100000 and kept.dtype == np.uint8 and kept.shape[1:] == (16, 16, 1)
    assert f"stopped by SIGTERM after {len(kept)} of 100000 samples" in log.read_text()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    model = load_trained(tiny_checkpoint)
    sampler = dataclasses.replace(model.diffusion.sampler, steps=2)  # +sampler.steps=2
    whole, _ = model.sample(len(kept), sampler, batch_size=16)
    assert np.array_equal(whole.numpy(), kept)  # the first samples of the whole set


def test_an_output_that_cannot_be_written_fails_before_sampling(tiny_checkpoint, tmp_path, caplog):
    from difftrain.cli.sample import sample
    from difftrain.errors import ConfigError
    from tests.conftest import compose_cfg

    cfg = compose_cfg(tmp_path, f"ckpt={tiny_checkpoint}", "n=10", "out=/proc/x.npz",
                      config_name="sample")  # fmt: skip
    with pytest.raises(ConfigError, match="out=/proc/x.npz: cannot write there"):
        sample(cfg)
    assert "sampling" not in caplog.text
