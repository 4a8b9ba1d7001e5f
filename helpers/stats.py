"""Class statistics shared by the OOD scores and the neural-collapse metrics.

Every statistic here is a function of cached feature tensors; nothing calls a model.
Notation follows the book's chapter on neural collapse: ``h`` features (N, D), ``y`` labels (N,),
``mu_c`` class means (K, D), ``mu_G`` global mean (D,), ``Sigma_W`` and ``Sigma_B`` (D, D).
Computations run in float64: the covariances feed pseudo-inverses, where float32 loses the small
eigenvalues first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor


def as_tensor(x: ArrayLike, name: str = "features", dtype: torch.dtype = torch.float64) -> Tensor:
    """Return ``x`` as a finite tensor of ``dtype``; raise a one-line ``ValueError`` otherwise."""
    t = torch.as_tensor(x).detach().to(dtype)
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contain {bad} NaN or inf values of {t.numel()}; "
            "check the checkpoint and the model's outputs (scores and metrics need finite inputs)."
        )
    return t


def as_labels(y: ArrayLike, n: int | None = None) -> Tensor:
    """Return labels as a 1-D int64 tensor, checking the length against ``n`` samples."""
    t = torch.as_tensor(y).detach().long().reshape(-1)
    if n is not None and t.numel() != n:
        raise ValueError(f"got {t.numel()} labels for {n} feature rows; pass one label per row.")
    return t


def class_means(h: Tensor, y: Tensor, num_classes: int | None = None) -> Tensor:
    """Class means mu_c = (1/n_c) sum_{i: y_i = c} h_i, shape (K, D)."""
    K = int(y.max()) + 1 if num_classes is None else num_classes
    counts = torch.bincount(y, minlength=K).to(h.dtype)                 # (K,)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()[:5]
        raise ValueError(f"classes {missing} have no samples; every class needs at least one training feature.")
    sums = torch.zeros(K, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, y, h)  # (K, D)
    return sums / counts[:, None]


def within_class_cov(h: Tensor, y: Tensor, means: Tensor) -> Tensor:
    """Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, shape (D, D)."""
    centred = h - means[y]                                               # (N, D)
    return centred.T @ centred / h.shape[0]


def between_class_cov(means: Tensor, mu_g: Tensor) -> Tensor:
    """Sigma_B = (1/K) sum_c (mu_c - mu_G)(mu_c - mu_G)^T, shape (D, D)."""
    centred = means - mu_g                                               # (K, D)
    return centred.T @ centred / means.shape[0]


@dataclass
class ClassStats:
    """Streaming sufficient statistics of labelled features, accumulated batch by batch.

    Holds per-class counts n_c (K,), sums S_c (K, D), per-class sums of squared norms q_c (K,)
    and the total second moment M = sum_i h_i h_i^T (D, D). From them:
    mu_c = S_c / n_c, mu_G = sum_c S_c / N and
    Sigma_W = M / N - sum_c n_c mu_c mu_c^T / N (the book's eq. eq-sigma-w).
    """

    counts: Tensor      # (K,)
    sums: Tensor        # (K, D)
    sq_norms: Tensor    # (K,)
    second: Tensor      # (D, D)

    @classmethod
    def empty(cls, num_classes: int, dim: int, device: torch.device | str = "cpu") -> ClassStats:
        z = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(num_classes, **z), torch.zeros(num_classes, dim, **z),
                   torch.zeros(num_classes, **z), torch.zeros(dim, dim, **z))

    def update(self, h: ArrayLike, y: ArrayLike) -> ClassStats:
        """Add one batch of features ``h`` (B, D) with labels ``y`` (B,); returns ``self``."""
        h = as_tensor(h).to(self.sums.device)
        y = as_labels(y, h.shape[0]).to(self.sums.device)
        if h.shape[1] != self.sums.shape[1]:
            raise ValueError(f"batch has {h.shape[1]} feature dimensions, the statistics expect {self.sums.shape[1]}.")
        if y.numel() and (y.min() < 0 or y.max() >= self.counts.numel()):
            raise ValueError(f"labels must lie in [0, {self.counts.numel()}); got {int(y.min())}..{int(y.max())}.")
        self.counts += torch.bincount(y, minlength=self.counts.numel()).to(torch.float64)
        self.sums.index_add_(0, y, h)
        self.sq_norms.index_add_(0, y, (h * h).sum(1))
        self.second += h.T @ h
        return self

    @property
    def n(self) -> float:
        return float(self.counts.sum())

    def means(self) -> Tensor:
        """Class means mu_c, (K, D); raises if a class saw no sample."""
        if (self.counts == 0).any():
            missing = torch.nonzero(self.counts == 0).flatten().tolist()[:5]
            raise ValueError(f"classes {missing} have no samples; every class needs at least one feature.")
        return self.sums / self.counts[:, None]

    def global_mean(self) -> Tensor:
        """Global mean mu_G, (D,)."""
        return self.sums.sum(0) / self.n

    def within_cov(self) -> Tensor:
        """Sigma_W, (D, D), from the second moment minus the class-mean outer products."""
        mu = self.means()
        return self.second / self.n - (mu.T * self.counts) @ mu / self.n

    def class_variances(self) -> Tensor:
        """Per-class variance sigma_c^2 = (1/n_c) sum ||h_i - mu_c||^2, (K,) (used by CDNV)."""
        mu = self.means()
        return (self.sq_norms / self.counts - (mu * mu).sum(1)).clamp_min(0)
