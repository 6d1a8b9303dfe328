"""Video evaluation: the temporal measures on clips whose motion is known, and the evaluator
against real and broken clips."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from difftrain.data.clips import moving_digits
from difftrain.evaluation.evaluator import Evaluator
from difftrain.evaluation.video import FrameDatasets, VideoEvaluator, centroids, clip_measures
from tests.conftest import CACHE


def square_clip(xs: list[int], y: int = 6, size: int = 20, side: int = 4) -> torch.Tensor:
    """One clip (1, 1, T, size, size) of a white square whose left edge is at xs[t]."""
    clip = torch.zeros(1, 1, len(xs), size, size, dtype=torch.uint8)
    for t, x in enumerate(xs):
        clip[0, 0, t, y : y + side, x : x + side] = 255
    return clip


def test_centroids_speed_and_deviation_of_known_motion():
    steady = square_clip([0, 2, 4, 6, 8])
    assert torch.allclose(centroids(steady)[0, :, 0], torch.tensor([1.5, 3.5, 5.5, 7.5, 9.5]))
    low, high = torch.tensor([1.5, 1.5]), torch.tensor([17.5, 17.5])
    flicker, speed, deviation = clip_measures(steady, low, high, margin=2.0)[0].tolist()
    assert speed == 2.0 and deviation == 0.0
    assert abs(flicker - 2 * 2 * 4 / 400) < 1e-6  # 8 pixels change fully per frame, of 400
    bounced = square_clip([12, 14, 16, 14, 12])  # reverses at the right edge (centroid 17.5)
    assert clip_measures(bounced, low, high, margin=2.0)[0, 2] == 0.0
    assert clip_measures(bounced, low, high, margin=0.0)[0, 2] > 1.0  # not at an edge: counted
    jitter = square_clip([6, 8, 6, 8, 6])  # back and forth mid-frame: no bounce
    assert clip_measures(jitter, low, high, margin=2.0)[0, 2] == 4.0
    static = square_clip([6] * 5)
    assert clip_measures(static, low, high, margin=2.0).abs().sum() == 0


def test_the_video_evaluator_scores_real_clips_as_real_and_shuffled_frames_as_broken(tmp_path):
    clips = partial(moving_digits, root=str(tmp_path / "no-mnist"), frames=6, image_size=24)
    frames = Evaluator(FrameDatasets(clips), 10, cache_dir=str(CACHE), classifier_images=20_000,
                       min_accuracy=0.8, kid_subset_size=100)  # fmt: skip
    evaluator = VideoEvaluator(clips, frames, reference_split="val", max_reference_clips=180,
                               clip_classifier_clips=1000, clip_classifier_examples=6000,
                               clip_classifier_min_accuracy=0.3)  # fmt: skip
    evaluator.setup()
    real = clips("train").images[:180]
    scores = evaluator(real)
    assert scores["identity_consistency"] >= 0.8 and scores["real_identity_consistency"] >= 0.8
    for name in ("flicker", "speed", "motion_deviation"):
        assert 0.8 < scores[f"{name}_ratio"] < 1.25, (name, scores)
    shuffled = evaluator(real[:, :, torch.tensor([3, 0, 5, 1, 4, 2])])
    assert shuffled["motion_deviation_ratio"] > 2 and shuffled["speed_ratio"] > 1.5
    assert abs(shuffled["fid"] - scores["fid"]) < 1e-3  # the same frames: per-frame FID alike
    frozen = evaluator(real[:, :, :1].expand(-1, -1, 6, -1, -1).contiguous())
    assert frozen["speed_ratio"] == 0 and frozen["identity_consistency"] == 1
    # The 3D CNN's distance sees what per-frame FID cannot: the order of the frames.
    floor = scores["real_clip_fd"]
    assert scores["clip_fd"] < 2 * floor, scores  # training clips it learned from, near the floor
    assert shuffled["clip_fd"] > 5 * floor and frozen["clip_fd"] > 5 * floor, (shuffled, frozen)
    assert evaluator.info["clip_classifier_test_accuracy"] > 0.3  # of 30: class x order


class TinyI3D(torch.nn.Module):
    """The TorchScript I3D's interface (StyleGAN-V's FVD detector) at toy size, randomly
    initialized: what evaluator.i3d_path loads, saved as torch.jit.save writes the real one."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 16, (3, 8, 8), stride=(1, 8, 8))
        self.head = torch.nn.Linear(16, 4)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        assert x.shape[1] == 3 and x.shape[-1] == 224 and x.min() >= -1 and x.max() <= 1
        features = self.conv(x).relu().mean((2, 3, 4))
        return features if return_features else self.head(features)


def test_fvd_from_a_local_torchscript_i3d_and_the_fix_without_one(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    clips = partial(moving_digits, root=str(tmp_path / "no-mnist"), frames=6, image_size=24)
    frames = Evaluator(FrameDatasets(clips), 10, cache_dir=str(CACHE), classifier_images=20_000,
                       min_accuracy=0.8, kid_subset_size=100)  # fmt: skip
    evaluator = VideoEvaluator(clips, frames, max_reference_clips=60, clip_classifier_clips=0,
                               i3d_path=str(path))  # fmt: skip
    evaluator.setup()
    real = clips("train").images[100:160]  # not the floor's clips
    scores = evaluator(real)
    assert scores["fvd"] < 3 * scores["real_fvd"], scores
    assert evaluator(255 - real)["fvd"] > 10 * scores["real_fvd"]  # negatives: far off
    with pytest.raises(FileNotFoundError, match="evaluator.i3d_path=.*download"):
        VideoEvaluator(clips, frames, i3d_path=str(tmp_path / "none.pt"))
    (tmp_path / "bad.pt").write_text("not a model")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        VideoEvaluator(clips, frames, i3d_path=str(tmp_path / "bad.pt"))
