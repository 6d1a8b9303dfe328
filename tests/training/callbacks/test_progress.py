"""The progress bar counts epochs for runs bounded by steps."""

from __future__ import annotations

from types import SimpleNamespace

from difftrain.training.callbacks.progress import ProgressBar


def test_epochs_are_counted_to_the_step_that_ends_training():
    bar = ProgressBar()
    trainer = SimpleNamespace(
        max_epochs=-1, max_steps=1000, num_training_batches=300, accumulate_grad_batches=1
    )
    bar._trainer = trainer
    assert bar._get_train_description(0).strip() == "Epoch 0/3"  # Lightning's: "Epoch 0/-2"
    trainer.max_epochs = 5
    assert bar._get_train_description(2).strip() == "Epoch 2/4"
