"""What holds for image runs holds for clip runs: the guard and health, post-hoc EMA,
autoguidance, a time budget, a preemption signal with an exact resume, and 2-process DDP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from difftrain.cli.phema import phema
from difftrain.cli.sample import sample
from difftrain.cli.train import train
from difftrain.runs.pretrained import load_guide, load_trained
from tests.cli.test_video import CLIPS
from tests.conftest import CACHE, compose_cfg, run_module

# Clips that read given frames (their draws are the conditioning's), with fault injection.
GIVEN = [*CLIPS, "net.given_frames=true", "debug=faults", "callbacks.fault_injection.nan_steps=[]"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def test_a_clip_run_rolls_back_nan_steps_keeps_post_hoc_ema_and_guides_itself(tmp_path):
    cfg = compose_cfg(
        tmp_path, *GIVEN, "trainer.max_steps=12", "trainer.val_check_interval=6", "callbacks=phema",
        "callbacks.posthoc_ema.snapshot_every=2", "callbacks.fault_injection.nan_steps=[3,4,5]",
        "callbacks.guard.snapshot_every=2", "callbacks.guard.max_nonfinite=3",
        "trainer.log_every_n_steps=1",  # the guard reads the losses on logging steps
    )  # fmt: skip
    train(cfg)
    run = Path(cfg.paths.output_dir)
    health = summary(run)["health"]
    assert health["nonfinite_steps"] == 3 and health["rollbacks"] == 1, health
    assert health["status"] == "finished" and "final_grad_norm" in health
    (early,) = phema(run, [0.05], step=4)
    (late,) = phema(run, [0.05])
    clips, _ = load_trained(late).sample(2, labels=[1, 2])
    assert clips.shape == (2, 4, 16, 16, 1) and clips.dtype == torch.uint8
    out = tmp_path / "guided.npz"
    sample(compose_cfg(tmp_path, f"ckpt={late}", f"guide={early}", "guidance=2", "n=2",
                       f"out={out}", config_name="sample"))  # fmt: skip
    assert np.load(out)["videos"].shape == (2, 4, 16, 16, 1)
    model = load_trained(late)
    plain, _ = model.generate(2, seed=0)
    guided, _ = model.generate(2, seed=0, guidance=2.0, guide=load_guide(early, model))
    assert (guided - plain).abs().max() > 1e-4  # the guide acted, on whole clips


def test_a_clip_run_stops_on_its_time_budget(tmp_path):
    cfg = compose_cfg(tmp_path, *CLIPS, "trainer.max_steps=100000", "trainer.max_time=00:00:00:03",
                      "trainer.val_check_interval=100000")  # fmt: skip
    train(cfg)
    run = Path(cfg.paths.output_dir)
    steps = summary(run)["steps"]
    assert 0 < steps < 100000 and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "samples" / f"step_{steps:07d}.gif").is_file()  # the last step is validated


@pytest.mark.slow  # the default suite keeps a faster test of the same path
def test_a_preempted_clip_run_resumes_exactly(tmp_path):
    """Two processes (DDP on the CPU) share a global batch of clips, each drawing its share of
    the given frames; told to stop at step 2 and resumed, they end bit for bit where one
    uninterrupted process with the same global batch ends, up to float reductions."""
    args = [*GIVEN, "trainer.max_steps=6", "trainer.val_check_interval=3",
            f"paths.cache_dir={CACHE}"]  # fmt: skip
    whole = tmp_path / "whole"
    run_module("difftrain.cli.train", *args, "data.batch_size=8", f"hydra.run.dir={whole}",
               cwd=tmp_path)  # fmt: skip
    cut = tmp_path / "cut"
    two = [*args, "trainer=ddp_cpu", "data.batch_size=4", f"hydra.run.dir={cut}"]
    stopped = run_module("difftrain.cli.train", *two, "callbacks.fault_injection.signal_step=2",
                         "callbacks.fault_injection.ranks=[0]", cwd=tmp_path, check=False)  # fmt: skip
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert summary(cut)["status"] == "preempted" and summary(cut)["steps"] == 3
    run_module("difftrain.cli.train", *two, "ckpt_path=last", cwd=tmp_path)
    assert summary(cut)["health"]["ranks_differ_by"] == 0.0
    a, b = state(whole), state(cut)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a
                if a[k].is_floating_point())  # fmt: skip
    assert worst < 1e-4, worst
