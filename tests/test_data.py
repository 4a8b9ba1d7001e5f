"""Tests for helpers.data: sets and their shapes, splits, augmentation, normalisation, missing data."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import data

from .conftest import make_tiny


def _indexed_set(labels: list[int]) -> data.ImageSet:
    """A set whose first pixel holds the image's index, so that subsets can be traced back."""
    n = len(labels)
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 1, 0, 0] = torch.arange(n) // 256
    return data.ImageSet("indexed", images, torch.tensor(labels), [str(c) for c in sorted(set(labels))])


def _indices(ds: data.ImageSet) -> torch.Tensor:
    return ds.images[:, 0, 0, 0].long() + 256 * ds.images[:, 1, 0, 0].long()


# ----------------------------------------------------------------------------------------------- sets
def test_synthetic_id_shapes_dtypes_and_labels(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    train = data.load("synthetic", "train", cfg)
    assert train.images.shape == (5 * 8, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [8] * 5
    assert len(train.classes) == 5
    test = data.load("synthetic", "test", cfg)
    assert torch.bincount(test.labels).tolist() == [10] * 5          # max(10, per_class // 3) per class
    assert not torch.equal(train.images[:10], test.images[:10])


def test_synthetic_ood_sets_are_unlabelled_and_the_validation_set_is_distinct(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path, ood_subset=50)
    sets = data.ood_sets(cfg)
    assert list(sets) == list(cfg.ood_datasets)
    for ds in sets.values():
        assert ds.images.shape == (50, 3, 32, 32) and ds.images.dtype == torch.uint8
        assert (ds.labels == -1).all()
    near = data.load("synthetic-near", "test", cfg)
    val = data.load("synthetic-near-val", "test", cfg)
    assert near.images.shape == val.images.shape and not torch.equal(near.images, val.images)


def test_ood_sets_include_extra_sets_and_limit_each(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path, ood_datasets="synthetic-digits", extra_ood="synthetic-textures", ood_subset=20)
    sets = data.ood_sets(cfg)
    assert list(sets) == ["synthetic-digits", "synthetic-textures"]
    assert [len(s) for s in sets.values()] == [20, 20]
    assert torch.equal(data.ood_sets(cfg)["synthetic-digits"].images, sets["synthetic-digits"].images)


def test_unknown_set_and_split_are_rejected(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    with pytest.raises(ValueError, match=r"unknown data set 'cifar1000'; use one of synthetic, .*svhn.* or "
                                         r"imagefolder:PATH"):
        data.load("cifar1000", "test", cfg)
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test', got 'val'"):
        data.load("synthetic", "val", cfg)


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)      # never download, even with internet
    monkeypatch.setattr(socket, "getaddrinfo", no_network)


def test_load_of_an_unprepared_real_set_says_how_to_prepare_it(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("svhn", "test", cfg)
    message = str(err.value)
    assert "\n" not in message
    assert f"'svhn' (test) is not prepared in {tmp_path / 'data'}" in message
    assert "run `python -m helpers.data svhn`" in message and "helpers.data.prepare(cfg)" in message
    assert not (tmp_path / "data").exists()                            # load only reads


def test_missing_real_set_offline_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_network(monkeypatch)
    cfg = make_tiny(tmp_path)
    start = time.monotonic()
    with pytest.raises(data.DataNotFoundError) as err:
        data.prepare(cfg, {"svhn": ("test",)}, quiet=True)
    assert time.monotonic() - start < 60
    message = str(err.value)
    assert "\n" not in message
    assert f"'svhn' (test) not found: no torchvision files in {tmp_path / 'data'}" in message
    assert "the torchvision download failed" in message and "-p data_root PATH" in message
    assert data.HOW_TO_GET["svhn"] in message
    assert not (tmp_path / "data" / "tensors").exists()                # nothing written by a failed prepare


def test_missing_real_set_advice_for_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_network(monkeypatch)
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path / "no-debian-package")
    with pytest.raises(data.DataNotFoundError, match=r"'fashion-mnist' \(train\) not found: .*apt-get install "
                                                     r"dataset-fashion-mnist"):
        data.prepare(make_tiny(tmp_path), {"fashion-mnist": ("train",)}, quiet=True)


@pytest.mark.skipif(not data.DEBIAN_FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    lines = data.prepare(cfg, {"fashion-mnist": ("test",)}, quiet=True)
    assert lines == [f"prepared fashion-mnist (test): 10,000 images from Debian's dataset-fashion-mnist "
                     f"({data.DEBIAN_FASHION})"]
    assert (tmp_path / "data" / "tensors" / "fashion-mnist-test.pt").exists()   # decoded once, then read
    ds = data.load("fashion-mnist", "test", cfg)
    assert ds.images.shape == (10000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels).tolist() == [1000] * 10 and len(ds.classes) == 10
    assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 0], ds.images[:, 2])
    assert ds.source.startswith("Debian's dataset-fashion-mnist")


def _png(path: Path, size: tuple[int, int], colour, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_imagefolder_resizes_any_size_and_labels_by_folder(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    _png(root / "cat" / "a.png", (50, 40), (255, 0, 0))
    _png(root / "cat" / "b.PNG", (20, 20), (0, 255, 0))
    _png(root / "dog" / "c.png", (64, 100), 128, mode="L")
    _png(root / "dog" / "d.png", (33, 31), (0, 0, 255, 255), mode="RGBA")
    (root / "dog" / "notes.txt").write_text("not an image")
    ds = data.load(f"imagefolder:{root}", "test", make_tiny(tmp_path))
    assert ds.images.shape == (4, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.classes == ["cat", "dog"]
    expected = torch.tensor([[255, 0, 0], [0, 255, 0], [128, 128, 128], [0, 0, 255]], dtype=torch.uint8)
    assert torch.equal(ds.images.amin((2, 3)), expected) and torch.equal(ds.images.amax((2, 3)), expected)


def test_imagefolder_prefers_the_split_subfolder(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _png(root / "train" / "a" / "x.png", (32, 32), (10, 10, 10))
    _png(root / "test" / "a" / "y.png", (32, 32), (200, 200, 200))
    _png(root / "test" / "b" / "z.png", (32, 32), (50, 50, 50))
    cfg = make_tiny(tmp_path)
    assert len(data.load(f"imagefolder:{root}", "train", cfg)) == 1
    test = data.load(f"imagefolder:{root}", "test", cfg)
    assert test.labels.tolist() == [0, 1] and int(test.images[0].max()) == 200


def test_imagefolder_missing_or_empty_folder(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    with pytest.raises(data.DataNotFoundError, match=r"image folder '.*nowhere' does not exist"):
        data.load(f"imagefolder:{tmp_path / 'nowhere'}", "test", cfg)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(data.DataNotFoundError, match=r"no images in"):
        data.load(f"imagefolder:{tmp_path / 'empty'}", "test", cfg)


# ------------------------------------------------------------------------------------------- splitting
def test_validation_split_is_disjoint_complete_and_seeded() -> None:
    ds = _indexed_set([i % 4 for i in range(200)])
    train, val = data.split_validation(ds, 0.1, seed=0)
    a, b = set(_indices(train).tolist()), set(_indices(val).tolist())
    assert len(b) == 20 and not a & b and a | b == set(range(200))
    again = data.split_validation(ds, 0.1, seed=0)[1]
    other = data.split_validation(ds, 0.1, seed=1)[1]
    assert torch.equal(_indices(again), _indices(val)) and not torch.equal(_indices(other), _indices(val))


def test_id_splits_of_the_tiny_config(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    splits = data.id_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.num_classes) == (36, 4, 50, 5)
    flat_train = splits.train.images.flatten(1)
    for img in splits.val.images.flatten(1):                          # no validation image is a training image
        assert not (flat_train == img).all(1).any()
    x = splits.train.images.float() / 255
    assert torch.allclose(splits.mean, x.mean((0, 2, 3))) and splits.mean.shape == (3,)
    assert torch.allclose(splits.std, x.std((0, 2, 3))) and splits.std.shape == (3,)
    assert splits.train.name == "synthetic:train" and splits.val.name == "synthetic:val"


def test_balanced_subset_is_balanced_and_seeded() -> None:
    ds = _indexed_set([i % 5 for i in range(100)] + [0] * 30)         # class 0 has 50 images, the others 20
    sub = data.balanced_subset(ds, 25, seed=0)
    assert torch.bincount(sub.labels).tolist() == [5] * 5
    idx = _indices(sub)
    assert len(set(idx.tolist())) == 25 and torch.equal(ds.labels[idx], sub.labels)
    assert torch.equal(_indices(data.balanced_subset(ds, 25, seed=0)), idx)
    assert not torch.equal(_indices(data.balanced_subset(ds, 25, seed=1)), idx)
    assert data.balanced_subset(ds, 0, seed=0) is ds and data.balanced_subset(ds, 1000, seed=0) is ds


def test_limit_keeps_at_most_n() -> None:
    ds = _indexed_set([-1] * 50)
    assert len(data.limit(ds, 10, seed=0)) == 10 and len(set(_indices(data.limit(ds, 10, 0)).tolist())) == 10
    assert data.limit(ds, 0, seed=0) is ds


# ------------------------------------------------------------------------------------ batches on device
def test_normalize_known_values() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = data.normalize(x, torch.tensor([0.0, 0.2, 0.5]), torch.tensor([1.0, 0.5, 0.25]))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 0.0, 2.0]))


def _random_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)   # no zeros: padding is visible


def test_augment_keeps_shape_and_dtype_and_is_deterministic() -> None:
    x = _random_images(8)
    a = data.augment(x, torch.Generator().manual_seed(3))
    b = data.augment(x, torch.Generator().manual_seed(3))
    c = data.augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_output_is_a_padded_crop_possibly_flipped() -> None:
    x = _random_images(12)
    out = data.augment(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        crops = [padded[i, :, oy:oy + 32, ox:ox + 32] for oy in range(9) for ox in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops), f"image {i}"


def test_augment_crops_stay_within_the_padding() -> None:
    x = torch.full((200, 3, 32, 32), 7, dtype=torch.uint8)
    out = data.augment(x, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0, 7}
    kept = (out[:, 0] == 7).sum((1, 2))                                # at least (32 - 4)^2 pixels survive
    assert kept.min() >= 28 * 28 and (kept == 32 * 32).any() and (kept == 28 * 28).any()
    rows = (out[:, 0] == 7).any(2).int()                               # (B, 32): rows that show the image
    top, bottom = rows.argmax(1), rows.flip(1).argmax(1)               # zero rows above and below it
    offsets = torch.where(top > 0, 4 - top, 4 + bottom)                # the vertical crop offset, 0..8
    assert set(offsets.tolist()) == set(range(9))                      # every shift in [-4, 4] occurs


def test_augment_flips_about_half() -> None:
    x = _random_images(1000, seed=1)
    out = data.augment(x, torch.Generator().manual_seed(0), pad=0)    # no crop: either x or x mirrored
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()
    assert 430 <= int(mirrored.sum()) <= 570                          # Binomial(1000, 1/2): ±4.4 sigma


def test_imageset_subset_and_len() -> None:
    ds = _indexed_set([0, 1, 2, 3])
    sub = ds.subset(torch.tensor([3, 1]), name="two")
    assert len(sub) == 2 and sub.name == "two" and sub.labels.tolist() == [3, 1]
    assert np.array_equal(_indices(sub).numpy(), [3, 1])


def test_synthetic_sets_are_generated_once_by_prepare_and_then_read(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_tiny(tmp_path)
    fresh = {name: data.load(name, "test", cfg) for name in ("synthetic", cfg.ood_datasets[0])}
    assert not (tmp_path / "data").exists()                            # load only reads
    lines = data.prepare(cfg, quiet=True)
    assert sum(line.startswith("generated synthetic") for line in lines) == 2 + len(set(cfg.ood_datasets)) + 1
    assert data.prepare(cfg, quiet=True) == []                         # once
    monkeypatch.setattr(data, "_generate", lambda *a: (_ for _ in ()).throw(AssertionError("regenerated")))
    for name, ds in fresh.items():
        read = data.load(name, "test", cfg)
        assert torch.equal(read.images, ds.images) and torch.equal(read.labels, ds.labels)
        assert (read.classes, read.source) == (ds.classes, ds.source)


def test_a_damaged_or_outdated_synthetic_file_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_tiny(tmp_path)
    data.prepare(cfg, quiet=True)
    path = data.synthetic_path(cfg, "synthetic", "test")
    expected = data.load("synthetic", "test", cfg)
    path.write_bytes(path.read_bytes()[:100])                          # truncated: generated again in memory
    assert torch.equal(data.load("synthetic", "test", cfg).images, expected.images)
    assert any("generated synthetic (test)" in line for line in data.prepare(cfg, quiet=True))
    other = make_tiny(tmp_path, seed=1)                                # another seed, another file
    assert data.synthetic_path(other, "synthetic", "test") != path
    monkeypatch.setattr(data.synthetic, "__file__", str(Path(data.__file__)))   # edited generator code
    assert data.synthetic_path(cfg, "synthetic", "test") != path


def test_sources_say_where_every_set_of_the_run_comes_from_without_reading_pixels(tmp_path: Path) -> None:
    import dataclasses

    cfg = dataclasses.replace(make_tiny(tmp_path), ood_datasets=("synthetic-digits", "cifar10"),
                              extra_ood=[f"imagefolder:{tmp_path / 'mine'}"])
    before = data.sources(cfg)
    assert before["synthetic (train)"] == before["synthetic (test)"] == f"helpers.synthetic, seed {cfg.seed}"
    assert before[f"{cfg.val_ood_dataset} (test)"] == f"helpers.synthetic, seed {cfg.seed + 7919}"   # held out
    assert before["cifar10 (test)"] == f"not prepared in {tmp_path / 'data'}"
    assert before[f"imagefolder:{tmp_path / 'mine'} (test)"] == f"folder {tmp_path / 'mine'}"
    assert not (tmp_path / "data").exists()                            # reading sources writes nothing
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    data._store(data.tensor_path(tmp_path / "data", "cifar10", "test"), images, torch.zeros(2).long(), ["a"],
                "the test's archive, a re-split")
    data.prepare(dataclasses.replace(cfg, ood_datasets=("synthetic-digits",), extra_ood=[]), quiet=True)
    after = data.sources(cfg)
    assert after["cifar10 (test)"] == "the test's archive, a re-split"
    assert after["synthetic-digits (test)"] == data.load("synthetic-digits", "test", cfg).source
    assert {k: v for k, v in after.items() if k != "cifar10 (test)"} == {k: v for k, v in before.items()
                                                                         if k != "cifar10 (test)"}
