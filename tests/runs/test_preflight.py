"""Bad input is refused before anything is written, with every problem named at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from difftrain.cli.train import train
from difftrain.errors import ConfigError
from difftrain.runs.preflight import check_values, check_writable
from difftrain.runs.resume import changed_settings, check_checkpoint
from tests.conftest import FAST, run_module


def test_bad_values_are_listed_together_with_their_allowed_range(make_cfg):
    cfg = make_cfg("optimizer.lr=fast", "data.batch_size=0", "ema.decay=1.5", "sampler.steps=0")
    assert sorted(check_values(cfg)) == [
        "data.batch_size=0: must be an integer in [1, inf)",
        "ema.decay=1.5: must be a number in [0, 1)",
        "optimizer.lr='fast': must be a number in (0, inf)",
        "sampler.steps=0: must be an integer in [1, inf)",
    ]
    assert check_values(make_cfg()) == []  # the defaults pass
    assert check_values(make_cfg("experiment=mnist_fast", "callbacks=phema")) == []


def test_a_seed_and_a_setting_no_part_takes_are_refused_with_the_fix(make_cfg):
    problems = check_values(make_cfg("seed=-1", "+optimizer.lrr=1e-3"))
    assert problems == [
        "seed=-1: must be an integer in [0, 4294967295] or null",
        "optimizer.lrr: torch.optim.Adam takes no 'lrr' (did you mean optimizer.lr?). Its "
        "settings: amsgrad, betas, capturable, decoupled_weight_decay, differentiable, eps, "
        "foreach, fused, lr, maximize, weight_decay",
    ]


def test_fp16_is_refused_with_the_precisions_that_work(make_cfg):
    (problem,) = check_values(make_cfg("trainer.precision=16-mixed"))
    assert problem.startswith("trainer.precision=16-mixed: fp16 needs loss scaling")
    assert "trainer.precision=bf16-mixed" in problem
    assert check_values(make_cfg("trainer=gpu")) == []  # bf16-mixed


def test_a_config_that_cannot_start_creates_no_run_dir_and_no_wandb_run(tmp_path):
    result = run_module(
        "difftrain.cli.train", "optimizer.lr=fast", "optimizer.weight_decay=-1", "data.batch_size=0",
        "+optimizer.lrr=1e-3",
        f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    message = result.stderr
    assert "cannot start (4 problem(s))" in message and "optimizer.lr='fast'" in message
    assert "optimizer.lrr: torch.optim.Adam takes no 'lrr'" in message
    assert "optimizer.weight_decay=-1: must be a number in [0, inf)" in message
    assert "Traceback" not in message
    assert not (tmp_path / "logs").exists() and not list(tmp_path.rglob("wandb"))


def test_checkpoint_problems_name_the_file_and_the_fix(make_cfg, tiny_checkpoint, tmp_path):
    problems, _ = check_checkpoint(str(tmp_path / "missing.ckpt"), make_cfg())
    assert "missing.ckpt: no such file" in problems[0]

    other = make_cfg(*FAST, "net.channels=16")  # the tiny checkpoint has net.channels=8
    problems, saved = check_checkpoint(str(tiny_checkpoint), other)
    assert (
        problems
        == [
            f"ckpt_path={tiny_checkpoint} holds another architecture: "
            "checkpoint net.channels=8, config net.channels=16"
        ]
        and saved.step == 4
    )

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "best.ckpt")
    damaged = folder / "last.ckpt"
    damaged.write_bytes(Path(tiny_checkpoint).read_bytes()[:5000])  # cut short mid-write
    (problem,), _ = check_checkpoint(str(damaged), make_cfg(*FAST))
    assert f"ckpt_path={damaged}: the file is damaged" in problem
    assert f"The previous checkpoint there is {folder / 'best.ckpt'}" in problem


def test_changed_settings_name_each_setting_once_where_it_is_set(make_cfg):
    from omegaconf import OmegaConf

    trained = make_cfg(*FAST)
    saved = OmegaConf.to_container(trained, resolve=True)
    assert changed_settings(saved, make_cfg(*FAST)) == {}
    resumed = make_cfg(*FAST, "optimizer.lr=0.01", "~callbacks.evaluate", "trainer.max_steps=9",
                       "model.clusters={_target_: difftrain.training.clusters.Clusters, k: 4}")  # fmt: skip
    resumed.paths.output_dir = "/elsewhere"
    assert changed_settings(saved, resumed) == {
        "optimizer.lr": (0.001, 0.01),  # not model.optimizer.lr, its interpolated copy
        "trainer.max_steps": (4, 9),  # not model.schedule_steps
        "callbacks.evaluate": ("{...}", "(not set)"),  # the part, not each of its settings
        "model.clusters": (None, "{...}"),
    }


def test_train_refuses_before_it_writes_a_summary(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, "logger=none", f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(ConfigError, match="nope.ckpt: no such file"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "summary.json").exists()


def test_unwritable_outputs_are_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    (problem,) = check_writable(**{"paths.log_dir": blocker / "logs"})
    assert problem.startswith(
        f"paths.log_dir={blocker / 'logs'}: {blocker} is not a writable folder"
    )
    assert check_writable(out=tmp_path / "new" / "deeper") == []


def test_a_run_dir_that_cannot_be_written_fails_before_hydra_logs_there(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_module(
        "difftrain.cli.train", f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path, check=False
    )
    assert result.returncode != 0
    assert "hydra.run.dir=" in result.stderr and "is not a writable folder" in result.stderr
    assert "Unable to configure handler" not in result.stderr


def test_damaged_checkpoint_is_refused_by_the_cli(tiny_checkpoint, tmp_path):
    damaged = tmp_path / "last.ckpt"
    damaged.write_bytes(torch.load.__doc__.encode())  # not a zip archive at all
    result = run_module(
        "difftrain.cli.train", *FAST, f"ckpt_path={damaged}", f"paths.log_dir={tmp_path / 'logs'}",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and f"ckpt_path={damaged}: the file is damaged" in result.stderr
    assert not (tmp_path / "logs").exists()


def test_a_full_disk_or_read_only_folder_ends_a_cli_with_its_message_alone():
    import errno

    from difftrain.runs.preflight import exit_on_bad_input

    def full():
        raise OSError(errno.ENOSPC, "cannot write the checkpoint /r/last.ckpt: No space left")

    def missing():
        raise FileNotFoundError(errno.ENOENT, "a bug's own error", "x")

    with pytest.raises(SystemExit, match=r"Error: \[Errno 28\] cannot write the checkpoint"):
        exit_on_bad_input(full)()
    with pytest.raises(SystemExit, match="Error: cannot write"):
        exit_on_bad_input(lambda: (_ for _ in ()).throw(PermissionError("cannot write")))()
    with pytest.raises(FileNotFoundError):  # not the machine's: keeps its traceback
        exit_on_bad_input(missing)()
