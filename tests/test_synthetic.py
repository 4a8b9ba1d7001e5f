"""Tests for the offline synthetic data sets (helpers/synthetic.py)."""

import numpy as np
import pytest

from helpers import synthetic


def test_id_shapes_dtypes_and_labels():
    x, y = synthetic.make_id("train", num_classes=7, per_class=3)
    assert x.shape == (21, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (21,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), np.full(7, 3))
    np.testing.assert_array_equal(y, np.sort(y))


def test_id_is_deterministic_and_depends_on_seed():
    a, _ = synthetic.make_id("test", num_classes=4, per_class=5, seed=3)
    b, _ = synthetic.make_id("test", num_classes=4, per_class=5, seed=3)
    c, _ = synthetic.make_id("test", num_classes=4, per_class=5, seed=4)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_class_subset_gives_the_same_images():
    small, y_small = synthetic.make_id("train", num_classes=3, per_class=4)
    large, y_large = synthetic.make_id("train", num_classes=12, per_class=4)
    np.testing.assert_array_equal(small, large[:12])
    np.testing.assert_array_equal(y_small, y_large[:12])


def test_fewer_images_per_class_are_a_prefix():
    few, _ = synthetic.make_id("train", num_classes=2, per_class=3)
    many, _ = synthetic.make_id("train", num_classes=2, per_class=8)
    np.testing.assert_array_equal(few[:3], many[:3])      # class 0
    np.testing.assert_array_equal(few[3:], many[8:11])    # class 1


def test_train_and_test_differ():
    tr, _ = synthetic.make_id("train", num_classes=2, per_class=4)
    te, _ = synthetic.make_id("test", num_classes=2, per_class=4)
    for i in range(len(tr)):
        assert not np.array_equal(tr[i], te[i])


def test_images_vary_within_and_across_classes():
    x, y = synthetic.make_id("train", num_classes=10, per_class=6)
    x = x.astype(np.float64)
    for c in range(10):
        imgs = x[y == c]
        assert imgs.std(axis=(1, 2, 3)).min() > 10            # no flat image
        assert imgs.std(axis=0).mean() > 10                   # images of a class are not copies
    means = np.stack([x[y == c].mean(0) for c in range(10)])  # class prototypes differ
    assert np.abs(means[:, None] - means[None]).mean(axis=(2, 3, 4))[~np.eye(10, dtype=bool)].min() > 5


@pytest.mark.parametrize("kind", synthetic.OOD_KINDS)
def test_ood_shapes_and_determinism(kind):
    a = synthetic.make_ood(kind, n=23, seed=1)
    b = synthetic.make_ood(kind, n=23, seed=1)
    c = synthetic.make_ood(kind, n=23, seed=2)
    assert a.shape == (23, 32, 32, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    assert a.astype(np.float64).std(axis=(1, 2, 3)).min() > 5
    np.testing.assert_array_equal(a[:7], synthetic.make_ood(kind, n=7, seed=1))


def test_near_ood_are_new_classes_of_the_same_family():
    near = synthetic.make_ood("near", n=20)
    x, _ = synthetic.make_id("train", num_classes=100, per_class=1)
    assert not any((img == x).all(axis=(1, 2, 3)).any() for img in near)
    same_family = synthetic._class_images(synthetic.NEAR_FIRST_CLASS, 2, synthetic._NEAR, 0)
    np.testing.assert_array_equal(near[[0, 10]], same_family)   # image i is held-out class i mod 10


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="digits.*near.*textures"):
        synthetic.make_ood("cifar10")
    with pytest.raises(ValueError, match="train"):
        synthetic.make_id("val")
    with pytest.raises(ValueError, match="per_class"):
        synthetic.make_id("train", per_class=0)
    with pytest.raises(ValueError, match="per_class"):
        synthetic.make_id("train", per_class=2.5)
    with pytest.raises(ValueError, match="num_classes"):
        synthetic.make_id("train", num_classes=-1)
    with pytest.raises(ValueError, match="near-OOD"):
        synthetic.make_id("train", num_classes=1001, per_class=1)
    with pytest.raises(ValueError, match="n must"):
        synthetic.make_ood("digits", n=0)
    with pytest.raises(ValueError, match="seed"):
        synthetic.make_id("train", seed=-1)


def _factors(class_id: int) -> tuple[int, int, int]:
    p = synthetic._prototype(class_id, 0)
    return p["shape"], p["fill"], p["background"]


def test_few_classes_show_every_factor_and_sixty_classes_every_combination():
    triples = [_factors(c) for c in range(60)]
    assert len(set(triples)) == 60                                  # (c mod 5, c mod 4, c mod 3) by the CRT
    for start in (0, 7, 33):                                        # any 5 consecutive classes show every value
        shapes, fills, backgrounds = zip(*triples[start:start + 5], strict=True)
        assert (set(shapes), set(fills), set(backgrounds)) == (set(range(5)), set(range(4)), set(range(3)))


def test_near_ood_classes_are_new_combinations_for_the_smoke_classes():
    from helpers.config import make_config

    K = make_config("smoke").num_classes
    seen = {_factors(c) for c in range(K)}
    near = [_factors(synthetic.NEAR_FIRST_CLASS + k) for k in range(synthetic.NEAR_CLASSES)]
    assert not seen & set(near)                                     # no held-out class repeats an ID triple
    for i in range(3):                                              # ... yet every factor value is a known one
        assert {t[i] for t in near} <= {t[i] for t in seen}


def test_classes_are_learnable_but_not_trivial_from_pixels():
    K = 20
    xtr, ytr = synthetic.make_id("train", num_classes=K, per_class=20)
    xte, yte = synthetic.make_id("test", num_classes=K, per_class=8)
    a, b = (x.astype(np.float64).reshape(len(x), 8, 4, 8, 4, 3).mean((2, 4)).reshape(len(x), -1)   # (N, 192)
            for x in (xtr, xte))                                     # 8x8 RGB thumbnails
    means = np.stack([a[ytr == c].mean(0) for c in range(K)])       # (K, 192)
    acc = (((b[:, None] - means[None]) ** 2).sum(-1).argmin(1) == yte).mean()
    assert 3 / K < acc < 0.9                                         # far above chance, far from solved by pixels
