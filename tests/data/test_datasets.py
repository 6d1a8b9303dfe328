"""Datasets, normalization and the datamodule's checks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from difftrain.data import datasets as ds
from difftrain.data.datamodule import ImageDataModule
from difftrain.data.transforms import to_model_range, to_uint8
from tests.conftest import SHARED_DATA, write_mnist


def test_normalization_round_trip_is_exact():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    for value_range in ((-1.0, 1.0), (0.0, 1.0), (-0.5, 0.5)):
        x = to_model_range(values.float() / 255, value_range)
        assert x.min() == value_range[0] and x.max() == value_range[1]
        assert torch.equal(to_uint8(x, value_range), values.permute(0, 2, 3, 1))


def test_digits_split_is_fixed_and_disjoint():
    train, val = ds.digits("train", image_size=16), ds.digits("val", image_size=16)
    assert len(train) + len(val) == 1797 and len(val) == 180
    x, y = train[0]
    assert x.shape == (1, 16, 16) and x.min() >= 0 and x.max() <= 1 and 0 <= y < 10
    assert torch.equal(ds.digits("val", image_size=16).images, val.images)
    flat = lambda d: {tuple(img.flatten().tolist()) for img in d.images}  # noqa: E731
    assert not flat(train) & flat(val) - {tuple([0] * 256)}


def test_digits_in_three_channels_are_grey_rgb():
    grey, rgb = ds.digits("val", image_size=16), ds.digits("val", image_size=16, channels=3)
    assert rgb.images.shape == (180, 3, 16, 16)
    assert all(torch.equal(rgb.images[:, c], grey.images[:, 0]) for c in range(3))


def test_mnist_from_torchvision_layout(tmp_path):
    root = write_mnist(tmp_path)
    train, val = ds.mnist("train", str(root)), ds.mnist("val", str(root))
    assert (len(train), len(val)) == (64, 32)
    assert train[0][0].shape == (1, 32, 32)


@pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not at ../shared/data"
)
def test_real_mnist_from_shared_data():
    train, val = ds.mnist("train", str(SHARED_DATA)), ds.mnist("val", str(SHARED_DATA))
    assert (len(train), len(val)) == (60_000, 10_000)
    assert train.labels.unique().tolist() == list(range(10))


def test_cifar10_from_torchvision_layout(fake_cifar10):
    train, val = ds.cifar10("train", str(fake_cifar10)), ds.cifar10("val", str(fake_cifar10))
    assert (len(train), len(val)) == (80, 16)
    assert train[0][0].shape == (3, 32, 32)


def test_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path):
    from difftrain.errors import ConfigError  # the commands print it without a traceback

    with pytest.raises(ConfigError, match=r"MNIST not found.*nowhere/MNIST.*download=true"):
        ds.mnist("train", str(tmp_path / "nowhere"))


def write_images(root, n_per_class=3, classes=("cat", "dog")):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.new("RGB", (40, 30), (i * 40, 100, 200)).save(root / c / f"{i}.png")
    return root


def test_image_folder_labels_resize_and_crop(tmp_path):
    root = write_images(tmp_path / "imgs", n_per_class=10)
    train = ds.image_folder("train", str(root), image_size=16, channels=3, val_fraction=0.2)
    val = ds.image_folder("val", str(root), image_size=16, channels=1, val_fraction=0.2)
    assert (len(train), len(val)) == (16, 4)
    assert train[0][0].shape == (3, 16, 16) and val[0][0].shape == (1, 16, 16)
    assert sorted(set(train.labels)) == [0, 1]


def test_unreadable_images_are_skipped_up_front_with_one_warning(tmp_path, caplog):
    root = write_images(tmp_path / "imgs", n_per_class=5)
    (root / "cat" / "0.png").write_bytes(b"not a png")
    (root / "cat" / "1.png").write_bytes(b"")
    whole = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "0.png").write_bytes(whole[: len(whole) // 2])  # truncated
    with caplog.at_level("INFO"):
        train = ds.image_folder("train", str(root), image_size=8, val_fraction=0.2)
        ds.image_folder("val", str(root), image_size=8, val_fraction=0.2)  # scanned once
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "skipping 3 unreadable file(s) of 10" in warnings[0]
    assert "cat/0.png" in warnings[0] and "empty file" in warnings[0]
    assert any("7 images, 2 classes (cat, dog)" in r.getMessage() for r in caplog.records)
    assert all(f.name not in {"0.png", "1.png"} or f.parent.name == "dog" for f in train.files)
    assert ds.folder_classes(str(root)) == 2 and ds.folder_classes(str(tmp_path / "none")) == 0


def test_an_image_spoilt_after_the_scan_names_the_file(tmp_path):
    root = write_images(tmp_path / "imgs")
    dataset = ds.image_folder("train", str(root), image_size=8, val_fraction=0.2)
    dataset.files[0].write_bytes(b"not a png")
    with pytest.raises(RuntimeError, match=r"cannot read image .*\.png.*remove or replace"):
        dataset[0]


def test_image_folder_num_classes_comes_from_the_subfolders(make_cfg, tmp_path):
    root = write_images(tmp_path / "imgs", classes=("a", "b", "c"))
    cfg = make_cfg("data=image_folder", f"data.dataset.root={root}")
    assert cfg.data.num_classes == 3 and cfg.evaluator.num_classes == 3


def test_datamodule_normalizes_augments_and_checks_shapes():
    dm = ImageDataModule(
        lambda split: ds.digits(split, image_size=8),
        image_size=8,
        channels=1,
        num_classes=10,
        hflip=True,
    )
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 8, 8) and x.min() >= -1 and x.max() <= 1 and x.min() == -1
    vx, _ = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(vx[:4], dm.normalize(dm.val_set.dataset.images[:4].float() / 255))
    wrong = ImageDataModule(
        lambda split: ds.digits(split, image_size=8), image_size=16, channels=1, num_classes=10
    )
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\) .* say \(1, 16, 16\)"):
        wrong.setup()
    too_few = ImageDataModule(
        lambda split: ds.digits(split, image_size=8), image_size=8, channels=1, num_classes=5
    )
    with pytest.raises(ValueError, match="num_classes=5"):
        too_few.setup()
