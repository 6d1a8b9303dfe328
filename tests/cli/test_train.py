"""End-to-end training runs: every dataset, checkpoints, resume, loggers and multiruns."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from difftrain.cli.train import train
from difftrain.errors import ConfigError
from difftrain.runs.tracking import read_offline_run
from tests.conftest import FAST, RANDOM_LABELS, SHARED_DATA, run_module, write_mnist


def outputs(cfg) -> Path:
    return Path(cfg.paths.output_dir)


def test_digits_run_writes_checkpoint_grid_and_wandb_run(make_cfg):
    cfg = make_cfg(
        *FAST, "data.val_batch_size=64"
    )  # enough fixed noise levels to fill every bucket
    metrics = train(cfg)
    run = outputs(cfg)
    assert (run / "checkpoints" / "last.ckpt").is_file() and (
        run / "checkpoints" / "best.ckpt"
    ).is_file()
    grids = sorted((run / "samples").glob("step_*.png"))
    assert grids and Image.open(grids[-1]).size == (8 * 18 + 2, 8 * 18 + 2)  # 64 samples of 16 px
    assert {"train/loss", "val/loss", "val/loss_sigma_lt0.1", "val/loss_sigma_ge10"} <= set(metrics)
    assert {"eval/fid", "eval/kid", "eval/precision", "eval/recall", "eval/class_entropy"} <= set(
        metrics
    )

    # The W&B offline run holds the resolved config and the logged metrics: read it back.
    (wandb_dir,) = (run / "wandb").glob("offline-run-*")
    logged = read_offline_run(wandb_dir)
    assert logged["config"]["net"]["channels"] == 8
    assert logged["config"]["data"]["_target_"] == "difftrain.data.datamodule.ImageDataModule"
    assert any("train/loss" in row for row in logged["history"])
    assert logged["summary"]["val/loss"] == pytest.approx(metrics["val/loss"])
    assert logged["summary"]["samples/_type"] == "images/separated"


def test_mnist_run(make_cfg, tmp_path):
    root = write_mnist(tmp_path / "mnist")
    train(make_cfg(*FAST, "data=mnist", f"data.dataset.root={root}", RANDOM_LABELS, "logger=none"))


@pytest.mark.slow  # 60-80 s on 2 cores
@pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not at ../shared/data"
)
def test_real_mnist_run(make_cfg):
    train(
        make_cfg(
            *FAST,
            "experiment=mnist_small",
            "net=unet_tiny",
            f"data.dataset.root={SHARED_DATA}",
            "logger=none",
        )
    )


def test_cifar10_run(make_cfg, fake_cifar10):
    train(
        make_cfg(
            *FAST,
            "data=cifar10",
            f"data.dataset.root={fake_cifar10}",
            "data.num_workers=0",
            RANDOM_LABELS,
            "logger=none",
        )
    )


def test_image_folder_run(make_cfg, tmp_path):
    from tests.data.test_datasets import write_images

    root = write_images(tmp_path / "imgs", n_per_class=10)
    cfg = make_cfg(
        *FAST,
        "data=image_folder",
        f"data.dataset.root={root}",
        "data.image_size=16",
        "data.num_workers=0",
        "data.num_classes=2",
        RANDOM_LABELS,
        "logger=none",
    )
    train(cfg)


def test_resume_continues_steps_and_ema(make_cfg, tmp_path):
    first = make_cfg(*FAST, "logger=none", "trainer.limit_train_batches=4")
    train(first)
    ckpt = outputs(first) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 4 and int(state["state_dict"]["ema.n_averaged"]) == 4
    second = make_cfg(
        *FAST,
        "logger=none",
        "trainer.limit_train_batches=4",
        "trainer.max_steps=8",
        f"ckpt_path={ckpt}",
    )
    train(second)
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 8 and int(state["state_dict"]["ema.n_averaged"]) == 8


def test_csv_logger(make_cfg):
    cfg = make_cfg(*FAST, "logger=csv")
    train(cfg)
    with open(outputs(cfg) / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(row["val/loss"] for row in rows) and any(row["train/loss"] for row in rows)


def test_net_that_cannot_downsample_the_images_fails_at_start_up(make_cfg):
    # a ConfigError, which the command prints with the key and no traceback
    with pytest.raises(ConfigError, match="model.net: .*image size 18 cannot be halved 2 times"):
        train(make_cfg(*FAST, "net=unet_small", "data.image_size=18", "logger=none"))


def test_zero_terminal_snr_with_eps_fails_at_start_up(make_cfg):
    with pytest.raises(
        ConfigError, match="model: schedule.zero_terminal_snr=true with objective=eps"
    ):
        train(make_cfg(*FAST, "schedule.zero_terminal_snr=true", "logger=none"))


@pytest.mark.parametrize("experiment", ["mnist_ddpm", "mnist_edm", "mnist_v_cosine"])
def test_mnist_experiments_train(make_cfg, tmp_path, experiment):
    root = write_mnist(tmp_path / "mnist")
    cfg = make_cfg(
        *FAST,
        f"experiment={experiment}",
        "net=unet_tiny",
        f"data.dataset.root={root}",
        RANDOM_LABELS,
        "logger=none",
    )
    assert train(cfg)["val/loss"] > 0


def test_class_conditional_run_with_label_dropout(make_cfg):
    cfg = make_cfg(
        *FAST, "net.num_classes=${data.num_classes}", "model.label_dropout=0.2", "logger=none"
    )
    train(cfg)
    assert (outputs(cfg) / "checkpoints" / "last.ckpt").is_file()


def test_multirun_gives_each_job_its_own_run_dir_and_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    run_module(
        "difftrain.cli.train", "-m", *FAST, "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    runs = [read_offline_run(next((job / "wandb").glob("offline-run-*"))) for job in jobs]
    assert [r["config"]["seed"] for r in runs] == [1, 2]
    assert all((job / "checkpoints" / "last.ckpt").is_file() for job in jobs)
    assert not (tmp_path / "wandb").exists()  # nothing leaks into the launch directory


def test_two_runs_started_at_once_get_a_run_dir_each(tmp_path):
    env = {**os.environ, "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    args = [sys.executable, "-m", "difftrain.cli.train", *FAST, "logger=none", "num_threads=1",
            f"paths.log_dir={tmp_path / 'logs'}", "hydra.run.dir=${paths.log_dir}/runs/same_second_${run_id:}"]  # fmt: skip
    # A core each (num_threads=1): two runs that each take both cores run many times slower.
    runs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]  # fmt: skip
    codes = [p.wait(timeout=600) for p in runs]
    consoles = [p.stdout.read().decode() for p in runs]
    assert codes == [0, 0], "\n".join(c[-3000:] for c in consoles)
    # One fresh cache: one run trains the evaluation classifier, the other waits and reads it.
    assert sum(c.count("training the evaluation classifier") for c in consoles) == 1
    dirs = sorted((tmp_path / "logs" / "runs").iterdir())
    assert len(dirs) == 2  # the same "second" (here: the same name), yet one dir per run
    for run in dirs:
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_run_dirs_are_named_by_time_and_process(make_cfg):
    from hydra import compose, initialize_config_dir

    from difftrain.config import CONFIG_DIR, RUN_ID

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        hydra = compose("train", return_hydra_config=True).hydra
    assert hydra.run.dir.endswith(f"_{RUN_ID}") and hydra.sweep.dir.endswith(f"_{RUN_ID}")


def test_wandb_mode_comes_from_the_command_line_then_the_environment(make_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert make_cfg().logger.wandb.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert make_cfg().logger.wandb.mode == "online"
    assert make_cfg("logger.wandb.mode=disabled").logger.wandb.mode == "disabled"


def test_with_wandb_disabled_no_wandb_path_is_printed(make_cfg, caplog):
    import logging

    caplog.set_level(logging.INFO)
    train(make_cfg(*FAST, "logger.wandb.mode=disabled", "~callbacks.evaluate"))
    report = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("trained "))
    assert "checkpoint:" in report and "W&B run" not in report and "wandb sync" not in report


def test_an_unwritable_wandb_dir_is_refused_before_the_run_starts(make_cfg, tmp_path):
    not_a_folder = tmp_path / "taken"
    not_a_folder.write_text("a file where the W&B folder would go")
    cfg = make_cfg(*FAST, f"logger.wandb.save_dir={not_a_folder}")
    with pytest.raises(
        ConfigError, match=f"logger.wandb.save_dir={not_a_folder}: .* not a writable"
    ):
        train(cfg)
    assert not outputs(cfg).exists()
    from difftrain.runs.preflight import (
        Preflight,  # the CLI's check, before Hydra makes the run dir
    )

    with pytest.raises(SystemExit, match="logger.wandb.save_dir"):
        Preflight().on_run_start(cfg)
