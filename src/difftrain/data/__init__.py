"""Data: image datasets in [0, 1] and the LightningDataModule that normalizes and augments them."""

from difftrain.data.datamodule import ImageDataModule
from difftrain.data.toy2d import Toy2DDataModule
from difftrain.data.transforms import to_model_range, to_uint8

__all__ = ["ImageDataModule", "Toy2DDataModule", "to_model_range", "to_uint8"]
