"""Data: image datasets in [0, 1] and the LightningDataModule that normalizes and augments them."""
