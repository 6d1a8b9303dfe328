"""difftrain-eval: from a checkpoint or from a sample file, to eval.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import CACHE, run_module

SMALL = [
    "evaluator.classifier_images=10000",
    "evaluator.max_reference=300",
    "evaluator.kid_subset_size=50",
]


def test_eval_a_checkpoint_writes_eval_json(tiny_checkpoint, tmp_path):
    out = tmp_path / "eval.json"
    result = run_module(
        "difftrain.cli.eval", f"ckpt={tiny_checkpoint}", "n=60", "sampler=dpmpp_2m", "sampler.steps=3",
        f"paths.cache_dir={CACHE}", f"out={out}", *SMALL, cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert {"fid", "kid", "precision", "recall", "class_entropy", "class_share"} <= set(
        report["metrics"]
    )
    assert report["n"] == 60 and report["nfe"] == 3 and report["checkpoint_step"] == 4
    assert report["feature"] == "classifier" and report["reference_split"] == "train"
    assert report["sampler"]["solver"]["_target_"] == "difftrain.diffusion.samplers.sample_dpmpp_2m"
    assert report["sampling_images_per_sec"] > 0 and report["feature_images_per_sec"] > 0
    assert "classifier_test_accuracy" in report and '"fid"' in result.stdout
    assert report["extractor"].startswith("classifier-") and report["reference"].endswith("-train")
    # the run scored itself against 200 reference images (KID subsets of 40): said, with the fix
    assert "evaluator.max_reference=200 evaluator.kid_subset_size=40" in result.stdout


def test_eval_says_nothing_of_settings_the_run_shares(tiny_checkpoint):
    from omegaconf import OmegaConf

    from difftrain.cli.eval import differs_from_run
    from difftrain.runs.pretrained import load_trained

    run = load_trained(tiny_checkpoint).config
    assert differs_from_run(run.evaluator, run) == []
    other = OmegaConf.merge(run.evaluator, {"split": "val"})
    assert differs_from_run(other, run) == [("split", "val", "train")]
    OmegaConf.update(run, "callbacks.evaluate", None)  # a run that did not evaluate itself
    assert differs_from_run(other, run) == []


def test_eval_a_sample_file_against_a_dataset(tmp_path):
    from difftrain.data.datasets import digits

    real = (digits("val", image_size=16).images[:100]).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "other.npz", images=real)
    run_module(
        "difftrain.cli.eval", f"samples={tmp_path / 'other.npz'}", "data=digits", f"paths.cache_dir={CACHE}",
        *SMALL, cwd=tmp_path,
    )  # fmt: skip
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n"] == 100 and report["metrics"]["recall"] > 0


def test_missing_inception_weights_fail_before_any_sampling(
    tiny_checkpoint, tmp_path, make_cfg, monkeypatch
):
    import torch

    import difftrain.cli.eval as cli
    from difftrain.evaluation import features

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(features, "URL_INCEPTION_V3", "http://127.0.0.1:9/weights.pth")
    drawn = []
    monkeypatch.setattr(cli, "_generate", lambda *a: drawn.append(1))
    cfg = make_cfg(f"ckpt={tiny_checkpoint}", "evaluator=inception", config_name="eval")
    with pytest.raises(RuntimeError, match="evaluator.inception_weights="):
        cli.evaluate(cfg)
    assert drawn == []
