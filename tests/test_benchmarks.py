"""The benchmark scripts run and print their figures (timings themselves are not tested)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_sampler_speed_compares_every_sampler_with_diffusers_at_equal_nfe():
    pytest.importorskip("diffusers")
    cmd = [sys.executable, str(BENCHMARKS / "sampler_speed.py"), "--net", "overhead",
           "--image-size", "8", "--batch", "4", "--steps", "4", "--repeats", "1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line.strip()}
    assert rows == {
        "ddim": "4/4", "euler": "4/4", "euler_ancestral": "4/4", "heun": "7/7",
        "dpmpp_2m": "4/4", "dpmpp_2m_sde": "4/4",
    }  # fmt: skip


def run_benchmark(name: str, *args: str) -> str:
    cmd = [sys.executable, str(BENCHMARKS / name), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout


def test_train_speed_measures_every_composed_net_config():
    out = run_benchmark("train_speed.py", "--nets", "unet_tiny", "mlp", "--steps", "1",
                        "--image-size", "8", "--batch-size", "4")  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"unet_tiny"}, out  # mlp draws points, not images
    assert all(float(images_per_s) > 0 for _, _, images_per_s, _ in rows.values())
    out = run_benchmark("train_speed.py", "--nets", "unet_tiny", "--steps", "1", "--image-size", "8",
                        "--batch-size", "4", "--precision", "bf16")  # fmt: skip
    assert "precision bf16" in out.splitlines()[0] and float(out.splitlines()[2].split()[3]) > 0


def test_activation_memory_compares_both_settings():
    out = run_benchmark("activation_memory.py", "--net", "unet_tiny", "--batch-size", "4",
                        "--channels", "1", "--image-size", "8")  # fmt: skip
    assert "without checkpointing" in out and "with checkpointing" in out and "memory x" in out


def test_train_overhead_times_the_bare_loop_and_the_difftrain_path(tmp_path):
    out = run_benchmark("train_overhead.py", "--net", "unet_tiny", "--batch-size", "4",
                        "--image-size", "8", "--steps", "2", "--warmup", "1",
                        "--profile", str(tmp_path), "--profile-steps", "2",
                        "--overrides", "logger=none")  # fmt: skip
    rows = {line[:18].strip(): line[18:].split() for line in out.splitlines()[2:]}
    assert set(rows) == {"bare loop", "difftrain-train"}, out
    assert rows["bare loop"][1] == "100.0%" and float(rows["difftrain-train"][0]) > 0
    assert "aten::" in (tmp_path / "difftrain.txt").read_text()  # the profiled steps' op table


def test_video_memory_gives_a_clip_length_with_and_without_checkpointing():
    out = run_benchmark("video_memory.py", "--net", "unet3d_tiny", "--frames", "2",
                        "--batch-size", "2", "--image-size", "8")  # fmt: skip
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("2", "off"), ("2", "on")]
    assert all(float(r[4]) > 0 for r in rows), out


def test_pretrained_memory_gives_each_memory_option():
    pytest.importorskip("diffusers")
    out = run_benchmark("pretrained_memory.py", "--batch-size", "2", "--image-size", "16",
                        "--width", "16", "--settings", "bf16 + checkpointing")  # fmt: skip
    rows = {line[:36].strip(): line[36:].split() for line in out.splitlines()[2:]}
    assert list(rows) == ["fp32", "bf16 + checkpointing"], out
    assert rows["fp32"][1] == "1.00" and float(rows["bf16 + checkpointing"][0]) > 0, out
