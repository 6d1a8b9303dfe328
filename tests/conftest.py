"""Shared fixtures: composing the Hydra config as the apps do, and small on-disk datasets."""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from difftrain.config import CONFIG_DIR

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Overrides that keep a training run to seconds on a CPU.
FAST = [
    "debug=fast",
    "net=unet_tiny",
    "trainer.accelerator=cpu",
    "data.batch_size=8",
    "data.val_batch_size=8",
    "~callbacks.progress_bar",
    "callbacks.evaluate.num_samples=40",
    "evaluator.classifier_images=10000",  # 7 epochs of digits: 0.99 accuracy in 3 s
    "evaluator.max_reference=200",
    "evaluator.kid_subset_size=40",
]
# Fault injection (conf/debug/faults.yaml) beside the fast debug settings; choose the steps with
# callbacks.fault_injection.nan_steps=[...].
FAULTS = "debug=[fast,faults]"
# Random images with random labels: no classifier learns them, so the evaluation's accuracy floor
# would (rightly) refuse its features. Runs on such data switch the floor off.
RANDOM_LABELS = "evaluator.min_accuracy=0"
CACHE = Path(tempfile.mkdtemp(prefix="difftrain-test-cache-"))  # classifiers and reference features
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)  # each session's own: not left behind


def compose_cfg(tmp_path: Path, *overrides: str, config_name: str = "train") -> DictConfig:
    """Compose a config like `difftrain-<name> overrides...`, with outputs under tmp_path."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides))
    if "paths" in cfg:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.data_dir = str(tmp_path / "data")
            cfg.paths.cache_dir = str(CACHE)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    return lambda *overrides, config_name="train": compose_cfg(
        tmp_path, *overrides, config_name=config_name
    )


def _train_tiny(tmp_path: Path, *overrides: str) -> Path:
    from difftrain.cli.train import train

    cfg = compose_cfg(tmp_path, *FAST, "logger=none", *overrides)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a few-step unet_tiny run on digits, shared by the tests that sample from one."""
    return _train_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_conditional_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, class-conditional with label dropout (for classifier-free guidance)."""
    return _train_tiny(
        tmp_path_factory.mktemp("tiny_cond"),
        "net.num_classes=${data.num_classes}",
        "model.label_dropout=0.1",
    )


def write_mnist(root: Path, n_train: int = 64, n_test: int = 32) -> Path:
    """Random 28x28 digits in torchvision's MNIST layout (uncompressed IDX files under root/MNIST/raw)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.tobytes()
        )
    return root


def write_cifar10(root: Path, n_per_batch: int = 16) -> Path:
    """Random images in torchvision's CIFAR-10 layout (pickled batches under root/cifar-10-batches-py)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n_per_batch).tolist(),
        }
        (base / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (base / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


@pytest.fixture
def fake_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CIFAR-10 tree; torchvision's md5 checks are bypassed since the files are not the real ones."""
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: True)
    return write_cifar10(tmp_path / "data")


# A toy2d multirun of two jobs in seconds: the first finishes, the second diverges (its loss is
# NaN from step 2 on, and the guard gives up after one rollback).
TINY_TOY = [
    "experiment=toy2d",
    "trainer.max_steps=24",
    "trainer.val_check_interval=12",
    "trainer.log_every_n_steps=4",
    "data.num_train=2048",
    "data.num_val=256",
    "data.val_batch_size=256",
    "net.hidden=32",
    "net.depth=2",
    "sampler.steps=4",
    "callbacks.evaluate.num_samples=100",
    "callbacks.evaluate.sampler.steps=4",
    "callbacks.sample_grid.num_samples=100",
    "callbacks.guard.window=10",
    "callbacks.guard.snapshot_every=2",
    "callbacks.guard.max_nonfinite=2",
    "callbacks.guard.max_rollbacks=1",
    "~callbacks.progress_bar",
    "debug=faults",  # its default steps lie beyond these 24
]
DIVERGING = "[" + ",".join(str(s) for s in range(2, 24)) + "]"


def run_module(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m args...` in cwd, with W&B quiet and no WANDB_MODE from outside."""
    env = {**os.environ, "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, "-m", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def tiny_multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multirun dir of TINY_TOY with one finished and one diverged job, run in parallel."""
    root = tmp_path_factory.mktemp("multirun")
    sweep = root / "sweep"
    run_module(
        "difftrain.cli.train", "-m", *TINY_TOY, f"callbacks.fault_injection.nan_steps=[],{DIVERGING}",
        "hydra/launcher=parallel", f"hydra.sweep.dir={sweep}", cwd=root,
    )  # fmt: skip
    return sweep


TEXT = [
    *[o for o in FAST if not o.startswith(("net=", "callbacks.evaluate", "evaluator."))],
    "experiment=captioned_digits",
    "net.channels=16",
    "net.head_channels=16",
    "net.norm_groups=4",
    "data.dataset.max_glyphs=200",
    "trainer.max_steps=4",
    "logger=none",
    "callbacks.alignment.num_seen=8",
    "callbacks.alignment.num_per_held_out=2",
    "callbacks.alignment.judge_images=500",
    "callbacks.alignment.judge_epochs=1",
    "callbacks.alignment.judge_min_accuracy=0",
    f"paths.cache_dir={CACHE}",
]  # fmt: skip  a 4-step captioned_digits run (tiny net, weak judge accepted)


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run dir of a 4-step text-to-image run, shared by the tests that sample from one."""
    run = tmp_path_factory.mktemp("text") / "run"
    run_module("difftrain.cli.train", *TEXT, f"hydra.run.dir={run}", cwd=run.parent)
    return run


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A randomly initialized tiny CLIP text model with a character-level CLIP tokenizer, saved
    as save_pretrained writes a real one: text_encoder=clip without a download."""
    pytest.importorskip("transformers")
    from benchmarks.lora_concept import tiny_clip

    return tiny_clip(tmp_path_factory.mktemp("clip") / "model", width=32, heads=2, max_length=40)
