"""Known-answer tests for helpers.stats: the one label check and the one per-class variance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.stats import ClassStats, as_labels, class_means, class_variances, within_class_cov


def _problem(K: int = 3, D: int = 4, N: int = 300, offset: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (N,), generator=g)
    y[:K] = torch.arange(K)                                              # every class present
    h = offset + 3 * torch.randn(K, D, generator=g, dtype=torch.float64)[y] + torch.randn(N, D, generator=g,
                                                                                          dtype=torch.float64)
    return h, y


def test_as_labels_accepts_integer_arrays_and_returns_int64():
    y = as_labels(np.array([0, 2, 1], dtype=np.int32), n=3, num_classes=3)
    assert y.dtype == torch.int64 and y.tolist() == [0, 2, 1]
    assert as_labels(torch.tensor([], dtype=torch.long), n=0, num_classes=2).numel() == 0


@pytest.mark.parametrize("labels, kwargs, message", [
    (np.array([0.0, 1.0]), {}, "integer class indices"),                 # floats are not silently truncated
    (torch.tensor([True, False]), {}, "integer class indices"),
    (np.array([[0], [1]]), {}, r"1-D \(N,\) array"),
    (np.array([0, 1, 1]), {"n": 2}, "got 3 labels for 2 feature rows"),
    (np.array([0, 3]), {"num_classes": 3}, r"labels must lie in \[0, 3\); got 0..3"),
    (np.array([-1, 0]), {}, r"labels must lie in \[0, K\)"),
    (np.array([0, 5]), {"num_classes": 2, "name": "train_labels"}, r"train_labels must lie in \[0, 2\)"),
])
def test_as_labels_rejects_bad_labels_in_one_line(labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        as_labels(labels, **kwargs)


def test_class_variances_known_answer():
    h = torch.tensor([[0.0, 0], [2, 0], [5, 5], [5, 7], [5, 9]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 1])
    mu = class_means(h, y)                                               # (1, 0) and (5, 7)
    # class 0: (1 + 1) / 2 = 1; class 1: (4 + 0 + 4) / 3 = 8/3
    torch.testing.assert_close(class_variances(h, y, mu), torch.tensor([1.0, 8 / 3], dtype=torch.float64))


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_streaming_equals_in_memory_with_classes_missing_from_batches(offset):
    K, D = 3, 4
    h, y = _problem(K, D, offset=offset)
    order = torch.argsort(y, stable=True)                                # sorted: early batches miss classes
    h, y = h[order], y[order]
    stats = ClassStats.empty(K, D)
    for lo, hi in [(0, 1), (1, 40), (40, 41), (41, 200), (200, 300)]:
        stats.update(h[lo:hi], y[lo:hi])
    mu = class_means(h, y, K)
    torch.testing.assert_close(stats.means(), mu, rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.class_variances(), class_variances(h, y, mu), rtol=1e-9, atol=0)
    if offset == 0.0:                                                    # Sigma_W streams from the raw second moment
        torch.testing.assert_close(stats.within_cov(), within_class_cov(h, y, mu), rtol=1e-9, atol=1e-12)


def test_class_stats_rejects_bad_batches():
    stats = ClassStats.empty(3, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        stats.update(torch.zeros(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"expect \(B, 4\)"):
        stats.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no samples"):
        stats.update(torch.zeros(2, 4), torch.tensor([0, 1])).class_variances()
