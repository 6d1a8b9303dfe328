"""Training with Lightning: the LightningModule, EMA, optimizers, augmentation and callbacks."""
