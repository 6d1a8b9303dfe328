"""DDP with two processes on the CPU (gloo): the processes agree, a 2-process run equals a
1-process run of the same global batch, decisions are collective, and outputs are written once."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import CACHE, FAST, run_module

RUN = [
    *FAST, "trainer.limit_train_batches=null", "trainer.max_steps=8", "trainer.val_check_interval=4",
    f"paths.cache_dir={CACHE}", "logger=none",
]  # fmt: skip
DDP = ["trainer=ddp_cpu", "data.batch_size=8"]  # 2 x 8: a global batch of 16
# Conditioned on clusters of the images, so that every process must fit the same clusters (a
# process with other clusters would train another model) and draw its share of them
CLUSTERED = [
    "net.num_classes=4",
    "model.clusters={_target_: difftrain.training.clusters.Clusters, k: 4, examples: 200}",
]
TOLERANCE = 1e-4  # largest weight difference allowed between 1 and 2 processes (fp32 reductions)


def state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="session")
def two_processes(tmp_path_factory) -> Path:
    """A 2-process run of 8 steps (global batch 16), with W&B, evaluation and sample grids,
    conditioned on clusters."""
    run = tmp_path_factory.mktemp("ddp") / "run"
    result = run_module(
        "difftrain.cli.train", *RUN, *CLUSTERED, *DDP, "logger=wandb", f"hydra.run.dir={run}",
        cwd=run.parent,
    )  # fmt: skip
    (run.parent / "console.txt").write_text(result.stdout + result.stderr)
    return run


def test_the_console_has_no_sync_dist_warnings_tips_or_known_noise(two_processes):
    console = (two_processes.parent / "console.txt").read_text()
    assert "sync_dist" not in console  # values every process holds alike are logged as such
    assert "litlogger" not in console and "LeafSpec" not in console


def test_two_processes_agree_and_match_one_process_of_the_same_global_batch(
    two_processes, tmp_path
):
    one = tmp_path / "one"
    run_module(
        "difftrain.cli.train", *RUN, *CLUSTERED, "data.batch_size=16", f"hydra.run.dir={one}",
        cwd=tmp_path,
    )  # fmt: skip
    assert summary(two_processes)["health"]["ranks_differ_by"] == 0.0  # identical bits
    a, b = state(one), state(two_processes)
    # The same clusters (to float rounding: one process has two threads, each of two has one),
    # with the same examples in each, so the same shares
    assert torch.equal(a["clusters.prior"], b["clusters.prior"])
    for key in ("clusters.centroids", "clusters.basis"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    differences = {
        k: (a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()
    }
    worst = max(differences.values())
    assert worst < TOLERANCE, sorted(differences.items(), key=lambda kv: -kv[1])[:3]
    assert any(k.startswith("ema.") for k in differences)  # the EMA is compared too
    fid_one, fid_two = (summary(r)["metrics"]["eval/fid"] for r in (one, two_processes))
    assert fid_two == pytest.approx(fid_one, rel=1e-3)  # each process drew half of the same samples


def test_the_outputs_are_written_once(two_processes):
    assert (two_processes / "train_rank1.log").is_file()  # the second process ran this job
    assert len(list((two_processes / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in (two_processes / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    assert sorted(p.name for p in (two_processes / "samples").iterdir()) == [
        "step_0000004.png", "step_0000008.png",
    ]  # fmt: skip
    assert summary(two_processes)["status"] == "finished"


def test_a_fault_on_one_process_makes_both_skip_and_roll_back_alike(tmp_path):
    run = tmp_path / "run"
    run_module(
        "difftrain.cli.train", *RUN, *DDP, "debug=[fast,faults]", "trainer.limit_train_batches=null",
        "callbacks.fault_injection.nan_steps=[3,4,5]", "callbacks.fault_injection.ranks=[1]",
        "callbacks.guard.snapshot_every=2", "callbacks.guard.max_nonfinite=3",
        f"hydra.run.dir={run}", cwd=tmp_path,
    )  # fmt: skip
    health = summary(run)["health"]
    assert health["nonfinite_steps"] == 3 and health["rollbacks"] == 1
    assert health["ranks_differ_by"] == 0.0
    logs = [(run / name).read_text() for name in ("train.log", "train_rank1.log")]
    assert all("rolling back from step 6 to step 2: 3 non-finite steps" in log for log in logs)


def test_a_signal_stops_both_processes_at_one_step_and_they_resume_exactly(two_processes, tmp_path):
    run = tmp_path / "run"
    stopped = run_module(
        "difftrain.cli.train", *RUN, *CLUSTERED, *DDP, "debug=[fast,faults]",
        "trainer.limit_train_batches=null", "callbacks.fault_injection.signal_step=2",
        "callbacks.fault_injection.ranks=[0]",
        f"hydra.run.dir={run}", cwd=tmp_path, check=False,
    )  # fmt: skip
    assert stopped.returncode == 143
    assert summary(run)["status"] == "preempted" and summary(run)["steps"] == 3
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert "preempted" in (run / "train_rank1.log").read_text()  # it stopped at the same step
    run_module(
        "difftrain.cli.train", *RUN, *CLUSTERED, *DDP, "ckpt_path=last", f"hydra.run.dir={run}",
        cwd=tmp_path,
    )  # fmt: skip
    whole, resumed = state(two_processes), state(run)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole), "the resumed run differs"


@pytest.mark.slow  # the default suite keeps a faster test of the same path
def test_a_multirun_of_ddp_jobs_runs_each_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    run_module(
        "difftrain.cli.train", "-m", *RUN, *DDP, "trainer.max_steps=2", "trainer.val_check_interval=2",
        "~callbacks.evaluate", "logger=wandb", "optimizer.lr=0.001,0.002", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        assert summary(sweep / job)["status"] == "finished"
        assert len(list((sweep / job / "wandb").glob("offline-run-*"))) == 1
        assert (sweep / job / "train_rank1.log").is_file()
    assert [summary(sweep / j)["swept"] for j in jobs] == [
        {"optimizer.lr": "0.001"},
        {"optimizer.lr": "0.002"},
    ]
    assert not list(tmp_path.glob("logs"))  # no worker launched the sweep again elsewhere


def test_fsdp_composes_with_its_units_and_refuses_what_it_cannot_shard(make_cfg):
    """trainer=fsdp is not run here: torch's FSDP refuses the CPU ("FSDP needs a non-CPU
    accelerator device"). What can be checked without a GPU is."""
    from hydra.utils import instantiate

    from difftrain.diffusion.denoiser import Denoiser
    from difftrain.nets.layers import ResBlock, SelfAttention
    from difftrain.training.distributed import HydraJobs, is_sharded
    from difftrain.training.posthoc_ema import PostHocEMA

    cfg = make_cfg("trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, HydraJobs) and is_sharded(strategy)  # workers run the job only
    assert strategy.kwargs["use_orig_params"]
    units = strategy.kwargs["auto_wrap_policy"]._module_classes
    assert units == {ResBlock, SelfAttention, Denoiser}  # the EMA copy is sharded as the weights
    assert strategy._state_dict_type == "full"

    phema = PostHocEMA(dirpath="unused")
    with pytest.raises(
        ValueError, match=r"callbacks=phema\) .* trainer=fsdp shards: use trainer=ddp"
    ):
        phema.on_train_start(SimpleNamespace(strategy=strategy), None)


@pytest.mark.slow  # about a minute: two runs, one of two processes
def test_a_distillation_of_two_processes_matches_one_process(two_processes, tmp_path):
    """distill=cd from the 2-process run as its (cluster-conditioned) teacher: each process
    holds the frozen teacher and draws its share of the global batch's levels and noise."""
    distil = [*RUN, *CLUSTERED, "distill=cd", f"model.init_from={two_processes}/checkpoints/last.ckpt",
              "callbacks.evaluate.every_n_validations=100"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    run_module("difftrain.cli.train", *distil, "data.batch_size=16", f"hydra.run.dir={one}",
               cwd=tmp_path)  # fmt: skip
    run_module("difftrain.cli.train", *distil, *DDP, f"hydra.run.dir={two}", cwd=tmp_path)
    assert summary(two)["health"]["ranks_differ_by"] == 0.0
    a, b = state(one), state(two)
    assert not any("teacher" in k for k in a)
    worst = max(
        (a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()
    )
    assert worst < TOLERANCE
