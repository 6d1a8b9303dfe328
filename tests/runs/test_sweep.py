"""Sweeps: what a multirun records about itself, and how a diverged job is scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from difftrain.config import CONFIG_DIR
from difftrain.runs.sweep import Job, current_job, describe_sweep, failure_rate
from difftrain.runs.tracking import read_offline_run
from difftrain.runtime import cores
from tests.conftest import DIVERGING, TINY_TOY, run_module


def hydra_cfg(*overrides: str):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_a_ready_sweep_and_the_command_line_both_count_as_swept():
    cfg = hydra_cfg("+sweep=regularization", "seed=3")
    with open_dict(cfg):  # the launching command line, as the multirun sees it
        cfg.hydra.overrides.task = ["+sweep=regularization", "optimizer.lr=1e-3,1e-2", "seed=3"]
    sweep = describe_sweep(cfg)
    assert sweep["name"] == "regularization"
    assert sweep["swept_keys"] == [
        "net.dropout",
        "optimizer.weight_decay",
        "ema.decay",
        "optimizer.lr",
    ]
    assert sweep["planned_jobs"] == 16


@pytest.mark.parametrize("name", ["regularization", "optimizers", "schedules"])
def test_ready_sweeps_run_on_toy2d_and_follow_the_experiment(name):
    cfg = hydra_cfg(f"+sweep={name}")
    assert cfg.hydra.runtime.choices.experiment == "toy2d"
    assert (
        describe_sweep(cfg)["planned_jobs"]
        == {"regularization": 8, "optimizers": 12, "schedules": 9}[name]
    )
    # Every value of every swept key composes, on toy2d and on MNIST.
    params = [o for o in OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])]  # fmt: skip
    for experiment in ("toy2d", "mnist_fast"):
        for pick in (0, -1):
            job = [f"{o.key_or_group}={list(o.sweep_string_iterator())[pick]}" if o.is_sweep_override()
                   else f"{o.key_or_group}={o.get_value_element_as_str()}" for o in params]  # fmt: skip
            composed = hydra_cfg(f"+sweep={name}", f"experiment={experiment}", *job)
            assert composed.hydra.runtime.choices.experiment == experiment


def test_optuna_search_plans_n_trials():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'")
    sweep = describe_sweep(hydra_cfg("hparams_search=optuna", "hydra.sweeper.n_trials=7"))
    assert sweep["swept_keys"] == ["optimizer.lr", "ema.decay", "optimizer.weight_decay"]
    assert sweep["planned_jobs"] == 7


def test_outside_a_multirun_the_job_is_the_task():
    assert current_job("toy2d") == Job(group="toy2d")


def test_failure_rate_counts_diverged_and_failed_jobs(tmp_path):
    for num, status in enumerate(["finished", "diverged", "failed", "running"]):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / "summary.json").write_text(json.dumps({"status": status}))
    assert failure_rate(Job(sweep_dir=tmp_path, planned_jobs=8)) == 2 / 8
    assert Job().worst == math.inf and Job(direction="maximize").worst == -math.inf


def test_multirun_jobs_are_named_grouped_and_summarized(tiny_multirun):
    sweep = json.loads((tiny_multirun / "sweep.json").read_text())
    assert (
        sweep["swept_keys"] == ["callbacks.fault_injection.nan_steps"]
        and sweep["planned_jobs"] == 2
    )
    finished, diverged = (
        json.loads((tiny_multirun / n / "summary.json").read_text()) for n in "01"
    )
    assert finished["status"] == "finished" and diverged["status"] == "diverged"
    assert (
        finished["name"] == "callbacks.fault_injection.nan_steps=[]"
        and finished["pid"] != diverged["pid"]
    )
    assert finished["group"] == diverged["group"] == f"toy2d-{sweep['launched']}"
    assert finished["threads"] == max(1, cores() // 2)  # 2 jobs side by side: half the cores each
    assert finished["metrics"]["val/loss"] > 0 and finished["health"]["rollbacks"] == 0
    assert diverged["health"]["rollbacks"] >= 1 and diverged["steps"] < 24
    wandb_run = read_offline_run(next((tiny_multirun / "0" / "wandb").glob("offline-run-*")))
    assert wandb_run["config"]["swept"] == {"callbacks.fault_injection.nan_steps": "[]"}
    assert wandb_run["summary"]["run/status"] == "finished"


@pytest.mark.slow  # the default suite keeps a faster test of the same path
def test_an_optuna_study_runs_and_continues_from_its_sqlite_storage(tmp_path):
    optuna = pytest.importorskip("optuna", reason="pip install -e '.[sweep]'")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for n_trials in (2, 1):
        run_module(
            "difftrain.cli.train", "hparams_search=optuna", *TINY_TOY, "logger=none",
            f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=tiny", f"hydra.sweep.dir={tmp_path / f'sweep{n_trials}'}",
            cwd=tmp_path,
        )  # fmt: skip
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 3 and all(math.isfinite(t.value) for t in study.trials)
    assert (tmp_path / "sweep1" / "optimization_results.yaml").is_file()


def test_the_wandb_sweep_calls_difftrain_train_with_valid_overrides():
    import yaml

    spec = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "wandb_sweeps" / "regularization.yaml").read_text()
    )
    assert spec["program"] == "difftrain-train" and spec["metric"]["name"] == "val/loss"
    fixed = [a for a in spec["command"] if not a.startswith("${")]
    for pick in (0, -1):
        job = [f"{k}={v['values'][pick]}" for k, v in spec["parameters"].items()]
        cfg = hydra_cfg(*fixed, *job)
        assert [OmegaConf.select(cfg, k) for k in spec["parameters"]] == [
            v["values"][pick] for v in spec["parameters"].values()
        ]


def test_an_optuna_study_scores_diverged_trials_worst_until_too_many_fail(tmp_path):
    optuna = pytest.importorskip("optuna", reason="pip install -e '.[sweep]'")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'")
    storage, sweep = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "sweep"
    result = run_module(
        "difftrain.cli.train", "hparams_search=optuna", *TINY_TOY, "logger=none",
        f"callbacks.fault_injection.nan_steps={DIVERGING}", "max_failure_rate=0.4", "hydra.sweeper.n_trials=3",
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=bad", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "TrainingDiverged" in result.stderr
    trials = optuna.load_study(study_name="bad", storage=storage).trials
    assert trials[0].value == math.inf  # the first failure (1 of 3 planned) was scored worst
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "0",
        "1",
    ]  # the second stopped it
    assert {json.loads((sweep / n / "summary.json").read_text())["status"] for n in "01"} == {
        "diverged"
    }


def test_a_job_that_fails_is_recorded_and_scored_worst_and_the_sweep_goes_on(tmp_path):
    """The first job's value is refused before it starts (a negative learning rate): it is
    recorded as failed, with the check's message, and the next job still runs."""
    sweep = tmp_path / "sweep"
    result = run_module(
        "difftrain.cli.train", "-m", *TINY_TOY, "logger=none", "optimizer.lr=-1,1e-3",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert "failed (ConfigError" in result.stdout + result.stderr
    failed, finished = (json.loads((sweep / n / "summary.json").read_text()) for n in "01")
    assert failed["status"] == "failed" and "optimizer.lr=-1" in failed["error"]
    assert failed["swept"] == {"optimizer.lr": "-1"}
    assert finished["status"] == "finished"
