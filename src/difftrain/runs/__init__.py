"""What a run leaves behind and how it is read back: checkpoints, summaries, sweeps, W&B runs."""
