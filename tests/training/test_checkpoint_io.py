"""Checkpoints are written whole or not at all, and a folder that refuses them is named."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest
import torch

from difftrain import files
from difftrain.training.checkpoint_io import AtomicCheckpointIO


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a zip archive")
        raise KeyboardInterrupt  # the kill arrives during the write

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


class FullDisk(io.FileIO):
    """A file on a disk with 4 KiB left: the kernel writes what fits, then answers ENOSPC."""

    def write(self, data) -> int:
        room = 4096 - self.tell()
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(memoryview(data).cast("B")[:room])


def saved_then_failed(path: Path) -> None:
    """The previous checkpoint is whole and no temporary file is left beside it."""
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_full_disk_is_named_with_the_space_left_and_the_fix(tmp_path, monkeypatch):
    io_, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io_.save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(
        files,
        "open",
        lambda file, mode: io.BufferedWriter(FullDisk(file, "w")),
        raising=False,
    )  # the real torch.save, writing onto a full disk: it raises "unexpected pos"
    with pytest.raises(
        OSError, match=rf"checkpoint {path}: No space left on device \([\d.]+ (GB|MB|kB|bytes) free"
    ) as e:
        io_.save_checkpoint({"step": 2, "weights": torch.zeros(10_000)}, path)
    assert e.value.errno == errno.ENOSPC and "paths.log_dir=" in str(e.value)
    monkeypatch.undo()
    saved_then_failed(path)


def test_a_write_failure_on_a_nearly_full_disk_is_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "cache.pt"
    files.save_atomically({"step": 1}, path)

    def fails(obj, f):  # torch.save's error when the disk fills, with no errno left in it
        f.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError, match=rf"No space left on device \(0 bytes free.*{path}") as e:
        files.save_atomically({"step": 2}, path)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    saved_then_failed(path)
    monkeypatch.setattr(torch, "save", fails)  # with room to spare it is some other failure
    with pytest.raises(RuntimeError, match="unexpected pos"):
        files.save_atomically({"step": 2}, path)


def test_a_folder_that_refuses_the_write_is_named(tmp_path, monkeypatch):
    io_, path = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io_.save_checkpoint({"step": 1}, path)
    path.parent.chmod(0o555)
    if os.access(path.parent, os.W_OK):  # root writes anyway: refuse as the folder would

        def refuse(file, mode):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))

        monkeypatch.setattr(files, "open", refuse, raising=False)
    try:
        with pytest.raises(PermissionError, match=rf"cannot write the checkpoint {path}: Permiss"):
            io_.save_checkpoint({"step": 2}, path)
    finally:
        path.parent.chmod(0o755)
    saved_then_failed(path)


def test_a_read_only_filesystem_is_named_without_the_clean_up_traceback(tmp_path, monkeypatch):
    io_, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io_.save_checkpoint({"step": 1}, path)

    def read_only(*args, **kwargs):  # a read-only mount refuses even to unlink a missing file
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files, "open", read_only, raising=False)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(PermissionError, match=rf"checkpoint {path}: Read-only file system") as e:
        io_.save_checkpoint({"step": 2}, path)
    assert e.value.__cause__.__context__ is None  # the write's own error, not the clean-up's
    monkeypatch.undo()
    saved_then_failed(path)


def test_the_trainer_writes_through_it(make_cfg):
    from hydra.utils import instantiate

    trainer = instantiate(make_cfg("trainer.accelerator=cpu").trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
