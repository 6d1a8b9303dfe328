"""Few-step generation end to end: a toy2d teacher, then Easy Consistency Tuning (distill=ect)
and consistency distillation (distill=cd) for a fifth of its steps, drawn in 2 steps against the
teacher's 35 and 2.

Measured (sliced W1 to the data, 4000 points; fresh data scores 0.014): the teacher 0.0149 at
NFE 35 and 0.386 at NFE 2; the student 0.053 at NFE 2 ([80, 0.8]; 0.035 at [80, 0.3]). The
issue's bar, 1.2x the teacher's NFE 35, is not met yet: the bounds below hold what is."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from difftrain.cli.train import train
from difftrain.diffusion.consistency import sample_consistency
from difftrain.diffusion.samplers import Sampler, sample_dpmpp_2m, sample_euler, sample_heun
from difftrain.evaluation.toy import ToyEvaluator
from difftrain.runs.pretrained import load_trained
from tests.conftest import compose_cfg

TOY = [
    "experiment=toy2d", "trainer.accelerator=cpu", "~callbacks.progress_bar", "logger=none",
    "net.hidden=128", "callbacks.evaluate.num_samples=1000", "callbacks.sample_grid.num_samples=500",
]  # fmt: skip


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory) -> Path:
    cfg = compose_cfg(tmp_path_factory.mktemp("teacher"), *TOY, "trainer.max_steps=1000",
                      "trainer.val_check_interval=1000")  # fmt: skip
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def swd(ckpt: Path, sampler: Sampler) -> float:
    points, _ = load_trained(ckpt).sample(4000, sampler, seed=0, batch_size=4000)
    return ToyEvaluator("ring", 8, 0.7, 0.02)(points)["swd"]


def test_ect_draws_in_two_steps_far_better_than_the_teacher_does(toy_teacher, tmp_path):
    cfg = compose_cfg(tmp_path, *TOY, "distill=ect", f"model.init_from={toy_teacher}",
                      "trainer.max_steps=200", "trainer.val_check_interval=200",
                      "loss.stages=4")  # fmt: skip
    train(cfg)
    run = Path(cfg.paths.output_dir)
    student = run / "checkpoints" / "last.ckpt"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and "eval/swd" in json.dumps(summary)
    assert summary["evaluation"]["sampler"] == "sample_consistency-2-karras-80.0-0.8"
    teacher_35 = swd(toy_teacher, Sampler(sample_heun, steps=18, spacing="karras"))
    teacher_2 = min(
        swd(toy_teacher, Sampler(solver, steps=2, spacing="karras"))
        for solver in (sample_euler, sample_dpmpp_2m)
    )
    two_steps = Sampler(sample_consistency, steps=2, spacing="karras", sigma_min=0.8)
    student_2 = swd(student, two_steps)
    assert student_2 <= 4.5 * teacher_35 and student_2 < teacher_2 / 5, (
        student_2, teacher_35, teacher_2,
    )  # fmt: skip
    _, nfe = load_trained(student).sample(10, seed=0)  # its own sampler: 2 consistency steps
    assert nfe == 2
    config = load_trained(student).config
    assert config.model.init_from == str(toy_teacher) and config.model.boundary_sigma == 0.002
    assert config.loss._target_.endswith("ConsistencyTuningLoss")  # its method, with the teacher


def test_cd_distils_a_frozen_teacher_into_two_steps(toy_teacher, tmp_path):
    cfg = compose_cfg(tmp_path, *TOY, "distill=cd", f"model.init_from={toy_teacher}",
                      "trainer.max_steps=200", "trainer.val_check_interval=200")  # fmt: skip
    train(cfg)
    student = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    teacher_2 = swd(toy_teacher, Sampler(sample_euler, steps=2, spacing="karras"))
    student_2 = swd(student, Sampler(sample_consistency, steps=2, spacing="karras", sigma_min=0.8))
    assert student_2 < teacher_2 / 3, (student_2, teacher_2)
    config = load_trained(student).config  # its teacher and method; no teacher weights kept
    assert config.model.init_from == str(toy_teacher) and config.task_name == "cd"
    assert config.loss._target_.endswith("ConsistencyDistillationLoss")
    state = torch.load(student, map_location="cpu", weights_only=False)["state_dict"]
    assert not any("teacher" in key for key in state)


def test_distill_ect_refuses_a_student_without_its_teacher(tmp_path):
    for method in ("ect", "cd"):
        cfg = compose_cfg(tmp_path / method, *TOY, f"distill={method}", "trainer.max_steps=2")
        with pytest.raises(Exception, match="model.init_from"):
            train(cfg)


def test_a_consistency_sampler_runs_through_guidance_and_labels(tiny_conditional_checkpoint):
    model = load_trained(tiny_conditional_checkpoint)  # any model: the path is the same
    sampler = Sampler(partial(sample_consistency), steps=2, spacing="karras", sigma_min=0.8)
    images, nfe = model.sample(3, sampler, seed=0, labels=[1, 2, 3], guidance=2.0)
    assert nfe == 2 and images.shape[0] == 3 and images.dtype == torch.uint8  # guided steps


@pytest.mark.parametrize("method", ["ect", "cd"])
def test_a_resumed_distillation_ends_with_the_same_weights(toy_teacher, tmp_path, method):
    """Stopped at step 3 and resumed to 6 (dropout on, the stage moving): the run never stopped."""
    stages = ["loss.stages=6", "loss.total_steps=6"] if method == "ect" else []  # one a step
    run = [*TOY, f"distill={method}", f"model.init_from={toy_teacher}", "net.dropout=0.1",
           "data.batch_size=16", "trainer.val_check_interval=3", *stages,
           "callbacks.evaluate.every_n_validations=100"]  # fmt: skip

    def last(cfg) -> dict:
        train(cfg)
        ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    straight = last(compose_cfg(tmp_path / "straight", *run, "trainer.max_steps=6"))
    first = compose_cfg(tmp_path / "first", *run, "trainer.max_steps=3")
    last(first)
    resumed = compose_cfg(tmp_path / "resumed", *run, "trainer.max_steps=6",
                          f"ckpt_path={first.paths.output_dir}/checkpoints/last.ckpt")  # fmt: skip
    state = last(resumed)
    assert state.keys() == straight.keys()
    assert all(torch.equal(state[k], straight[k]) for k in state), method
