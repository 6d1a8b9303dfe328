"""Text-to-image end to end at tiny size: train on captioned_digits, judge alignment, draw prompts."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import run_module


def test_a_text_run_logs_alignment_and_writes_prompted_grids(tiny_text_run):
    text_run = tiny_text_run
    summary = json.loads((text_run / "summary.json").read_text())
    assert summary["status"] == "finished"
    alignment = summary["alignment"]
    assert {"digit", "foreground", "background", "all", "heldout_all"} <= set(alignment)
    assert alignment["prompts"] == 8 + 3 * 2 and alignment["held_out_prompts"] == 6
    assert all(0 <= alignment[k] <= 1 for k in ("digit", "heldout_all"))
    prompts = (text_run / "samples" / "step_0000004.txt").read_text().splitlines()
    assert len(prompts) == 32 and prompts[0].startswith("a ")


def test_difftrain_sample_draws_a_prompt_and_a_prompt_file(tiny_text_run, tmp_path):
    text_run = tiny_text_run
    ckpt = text_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "one.npz"
    # as the README writes a prompt with a comma (the shell strips the outer quotes)
    run_module("difftrain.cli.sample", f"ckpt={ckpt}", 'prompt="a red seven on a gray background, center"',
               "n=3", "guidance=3", f"out={out}", "+sampler.steps=2", cwd=tmp_path)  # fmt: skip
    drawn = np.load(out)
    assert drawn["images"].shape == (3, 32, 32, 3)
    assert list(drawn["prompts"]) == ["a red seven on a gray background, center"] * 3
    file = tmp_path / "prompts.txt"
    file.write_text("a small blue three on a black background, top left\n\na large white one\n")
    out = tmp_path / "many.npz"
    run_module("difftrain.cli.sample", f"ckpt={ckpt}", f"prompts={file}", "n=4",
               f"out={out}", "+sampler.steps=2", cwd=tmp_path)  # fmt: skip
    assert list(np.load(out)["prompts"]) == [
        "a small blue three on a black background, top left", "a large white one",
    ] * 2  # fmt: skip
    bad = run_module("difftrain.cli.sample", f"ckpt={ckpt}", "prompt=a purple dragon", "n=1",
                     f"out={tmp_path / 'bad.npz'}", cwd=tmp_path, check=False)  # fmt: skip
    assert bad.returncode != 0
    assert "not trained on: ['dragon', 'purple']" in bad.stdout + bad.stderr
