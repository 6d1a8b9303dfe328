"""Reading runs back: run dirs, multirun dirs and W&B offline runs, with their status."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from difftrain.runs.read import flatten, load_runs, read_wandb_api
from difftrain.runs.summary import write_summary


def test_write_summary_updates_and_drops_non_finite_numbers(tmp_path):
    write_summary(tmp_path, status="running", name="a")
    write_summary(tmp_path, status="diverged", metrics={"val/loss": float("nan")})
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "status": "diverged", "name": "a", "metrics": {"val/loss": None}
    }  # fmt: skip


def test_a_summary_write_killed_midway_leaves_the_previous_summary(tmp_path, monkeypatch):
    write_summary(tmp_path, status="running", name="a")

    def dies_midway(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt  # the kill arrives during the write

    monkeypatch.setattr(Path, "write_text", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_summary(tmp_path, status="finished", metrics={"val/loss": 0.5})
    monkeypatch.undo()
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "running", "name": "a"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left


def test_a_cut_short_summary_is_written_afresh_with_a_warning(tmp_path, caplog):
    (tmp_path / "summary.json").write_text('{"status": "running", "na')  # an older difftrain
    write_summary(tmp_path, status="failed")
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "failed"}
    assert f"{tmp_path / 'summary.json'} cannot be read (JSONDecodeError" in caplog.text


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


def test_a_multirun_reads_as_its_jobs_with_status_history_and_config(tiny_multirun):
    runs = load_runs(tiny_multirun)
    assert [r.status for r in runs] == ["finished", "diverged"]
    assert runs[0].swept == {"callbacks.fault_injection.nan_steps": "[]"}
    assert runs[0].config["trainer.max_steps"] == 24 and runs[0].choices["net"] == "mlp"
    # an interpolated value shows what it took; a group, or a path only Hydra knows, as written
    assert runs[0].config["model.schedule_steps"] == 24
    assert runs[0].config["model.net"] == "${net}"
    assert runs[0].config["paths.output_dir"] == "${hydra:runtime.output_dir}"
    steps, losses = runs[0].curve("train/loss")
    assert len(steps) == len(losses) >= 5 and steps == sorted(steps)
    assert runs[0].curve("val/loss")[0] and runs[0].checkpoint.endswith("last.ckpt")
    assert load_runs(tiny_multirun / "1")[0].health["rollbacks"] >= 1


def test_a_wandb_offline_run_reads_like_its_run_dir(tiny_multirun):
    (offline,) = (tiny_multirun / "0" / "wandb").glob("offline-run-*")
    (run,) = load_runs(offline)
    assert run.status == "finished" and run.name == "callbacks.fault_injection.nan_steps=[]"
    assert (
        run.swept == {"callbacks.fault_injection.nan_steps": "[]"}
        and run.config["trainer.max_steps"] == 24
    )
    assert run.metrics["val/loss"] == pytest.approx(load_runs(tiny_multirun)[0].metrics["val/loss"])
    assert run.curve("train/loss")[0]


def test_a_running_job_shows_as_running_until_its_process_is_gone(tiny_multirun, tmp_path):
    import os
    import shutil
    import socket
    import subprocess

    job = shutil.copytree(tiny_multirun / "0", tmp_path / "0")
    write_summary(job, status="running", host=socket.gethostname(), pid=os.getpid())
    assert load_runs(tmp_path)[0].status == "running"
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_summary(job, pid=gone.pid)
    assert load_runs(tmp_path)[0].status == "killed"
    write_summary(job, host="another-node")  # there, nobody can tell
    assert load_runs(tmp_path)[0].status == "running"


def test_paths_without_runs_say_what_they_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"holds no runs: no \.hydra/"):
        load_runs(tmp_path)


def test_wandb_api_runs_become_runs(monkeypatch):
    """The W&B API needs an account and network; its objects are replaced by ones of the same shape."""
    import wandb

    api_run = SimpleNamespace(
        url="https://wandb.ai/me/difftrain/runs/x1", name="optimizer.lr=0.001", state="crashed",
        config={"optimizer": {"lr": 0.001}, "swept": {"optimizer.lr": "0.001"}},
        summary={"val/loss": 0.5, "health/rollbacks": 1, "_runtime": 3},
        scan_history=lambda: [{"trainer/global_step": 9, "train/loss": 1.0}],
    )  # fmt: skip
    calls = []

    class Api:
        def runs(self, path, filters=None):
            calls.append((path, filters))
            return [api_run]

    monkeypatch.setattr(wandb, "Api", Api)
    (run,) = read_wandb_api("me/difftrain", "regularization-1")
    assert calls == [("me/difftrain", {"group": "regularization-1"})]
    assert (run.status, run.config, run.swept) == (
        "crashed",
        {"optimizer.lr": 0.001},
        {"optimizer.lr": "0.001"},
    )
    assert run.metrics == {"val/loss": 0.5} and run.health == {"rollbacks": 1}
    assert run.curve("train/loss") == ([9], [1.0])


def test_a_run_that_fails_to_start_says_so_in_its_summary(make_cfg):
    from difftrain.cli.train import train

    cfg = make_cfg("data=mnist", "logger=none", "data.dataset.root=/nonexistent")
    with pytest.raises(Exception, match="nonexistent"):
        train(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["status"] == "failed" and "nonexistent" in summary["error"]
