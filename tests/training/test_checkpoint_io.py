"""Checkpoints are written whole or not at all, and a folder that refuses them is named."""

from __future__ import annotations

import pytest
import torch

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


def test_a_folder_that_refuses_the_write_is_named(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(
        PermissionError, match=rf"cannot write the checkpoint {tmp_path}/ckpts/last.ckpt"
    ):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "ckpts" / "last.ckpt")


def test_the_trainer_writes_through_it(make_cfg):
    from hydra.utils import instantiate

    trainer = instantiate(make_cfg("trainer.accelerator=cpu").trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
