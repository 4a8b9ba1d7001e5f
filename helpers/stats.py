"""Class statistics shared by the OOD scores and the neural-collapse metrics.

The one home of the label check (``as_labels``) and of the per-class statistics: class means,
Sigma_W and the per-class variance, both in memory and streamed batch by batch (``ClassStats``).
Every statistic here is a function of cached feature tensors; nothing calls a model.
Notation follows the book's chapter on neural collapse: ``h`` features (N, D), ``y`` labels (N,),
``mu_c`` class means (K, D), ``mu_G`` global mean (D,), ``Sigma_W`` (D, D).
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


def as_labels(y: ArrayLike, n: int | None = None, num_classes: int | None = None, name: str = "labels") -> Tensor:
    """The one label check: integer, 1-D, ``n`` entries, values in [0, K); returns int64 (N,).

    Without ``num_classes`` only non-negativity is checked (K is then inferred by the caller).

    Args:
        y: class indices, (N,).
        n: number of feature rows the labels must match; ``None`` skips the check.
        num_classes: K; ``None`` skips the upper bound.
        name: what the error messages call the labels, e.g. ``"train_labels"``.
    """
    t = torch.as_tensor(y).detach()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices; got dtype {t.dtype}. Pass an int64 array.")
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D (N,) array; got shape {tuple(t.shape)}. Flatten it first.")
    if n is not None and t.numel() != n:
        raise ValueError(f"got {t.numel()} {name} for {n} feature rows; pass one label per row.")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or (num_classes is not None and int(t.max()) >= num_classes)):
        bound = "K" if num_classes is None else num_classes
        raise ValueError(f"{name} must lie in [0, {bound}); got {int(t.min())}..{int(t.max())}.")
    return t


def _check_counts(counts: Tensor) -> None:
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()[:5]
        raise ValueError(f"classes {missing} have no samples; every class needs at least one training feature.")


def class_means(h: Tensor, y: Tensor, num_classes: int | None = None) -> Tensor:
    """Class means mu_c = (1/n_c) sum_{i: y_i = c} h_i, shape (K, D)."""
    K = int(y.max()) + 1 if num_classes is None else num_classes
    counts = torch.bincount(y, minlength=K).to(h.dtype)                 # (K,)
    _check_counts(counts)
    sums = torch.zeros(K, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, y, h)  # (K, D)
    return sums / counts[:, None]


def within_class_cov(h: Tensor, y: Tensor, means: Tensor) -> Tensor:
    """Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, shape (D, D)."""
    centred = h - means[y]                                               # (N, D)
    return centred.T @ centred / h.shape[0]


def _sq_deviations(h: Tensor, y: Tensor, means: Tensor) -> Tensor:
    """Per-class sums of squared deviations sum_{i: y_i = c} ||h_i - mu_c||^2, shape (K,).

    The one implementation behind both ``class_variances`` and ``ClassStats``.
    """
    sq = ((h - means[y]) ** 2).sum(1)                                    # (N,)
    return torch.zeros(means.shape[0], dtype=h.dtype, device=h.device).index_add_(0, y, sq)


def class_variances(h: Tensor, y: Tensor, means: Tensor) -> Tensor:
    """Per-class variance sigma_c^2 = (1/n_c) sum_{i: y_i = c} ||h_i - mu_c||^2, shape (K,).

    The book's eq. eq-cdnv (chapter "Neural collapse"); ``ClassStats.class_variances`` streams it.
    """
    counts = torch.bincount(y, minlength=means.shape[0]).to(h.dtype)    # (K,)
    return _sq_deviations(h, y, means) / counts


@dataclass
class ClassStats:
    """Streaming sufficient statistics of labelled features, accumulated batch by batch.

    Holds per-class counts n_c (K,), sums S_c (K, D), per-class sums of squared deviations from the
    class mean Q_c = sum_{i: y_i = c} ||h_i - mu_c||^2 (K,) and the second moment M = sum_i h_i h_i^T
    (D, D). From them: mu_c = S_c / n_c, mu_G = sum_c S_c / N, sigma_c^2 = Q_c / n_c and
    Sigma_W = M / N - sum_c n_c mu_c mu_c^T / N (the book's eq. eq-sigma-w, section "Streaming
    sufficient statistics"). Q_c is merged with the pairwise update of Chan, Golub & LeVeque:
    Q = Q_a + Q_b + (n_a n_b / n) ||mu_a - mu_b||^2, each batch's Q_b computed by ``_sq_deviations``.
    """

    counts: Tensor      # (K,)
    sums: Tensor        # (K, D)
    sq_dev: Tensor      # (K,)
    second: Tensor      # (D, D)

    @classmethod
    def empty(cls, num_classes: int, dim: int, device: torch.device | str = "cpu") -> ClassStats:
        z = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(num_classes, **z), torch.zeros(num_classes, dim, **z),
                   torch.zeros(num_classes, **z), torch.zeros(dim, dim, **z))

    def update(self, h: ArrayLike, y: ArrayLike) -> ClassStats:
        """Add one batch of features ``h`` (B, D) with labels ``y`` (B,); returns ``self``."""
        h = as_tensor(h).to(self.sums.device)
        if h.ndim != 2 or h.shape[1] != self.sums.shape[1]:
            raise ValueError(f"batch has shape {tuple(h.shape)}, the statistics expect (B, {self.sums.shape[1]}).")
        y = as_labels(y, h.shape[0], self.counts.numel()).to(self.sums.device)
        n_b = torch.bincount(y, minlength=self.counts.numel()).to(torch.float64)          # (K,)
        s_b = torch.zeros_like(self.sums).index_add_(0, y, h)                             # (K, D)
        mu_b = s_b / n_b.clamp_min(1)[:, None]                                            # (K, D) batch means
        mu_a = self.sums / self.counts.clamp_min(1)[:, None]                              # (K, D) running means
        weight = self.counts * n_b / (self.counts + n_b).clamp_min(1)                     # (K,) n_a n_b / n
        self.sq_dev += _sq_deviations(h, y, mu_b) + weight * ((mu_a - mu_b) ** 2).sum(1)
        self.counts += n_b
        self.sums += s_b
        self.second += h.T @ h
        return self

    @property
    def n(self) -> float:
        return float(self.counts.sum())

    def means(self) -> Tensor:
        """Class means mu_c, (K, D); raises if a class saw no sample."""
        _check_counts(self.counts)
        return self.sums / self.counts[:, None]

    def global_mean(self) -> Tensor:
        """Global mean mu_G, (D,)."""
        return self.sums.sum(0) / self.n

    def within_cov(self) -> Tensor:
        """Sigma_W, (D, D), from the second moment minus the class-mean outer products."""
        mu = self.means()
        return self.second / self.n - (mu.T * self.counts) @ mu / self.n

    def class_variances(self) -> Tensor:
        """Per-class variance sigma_c^2 = Q_c / n_c, (K,) (used by CDNV); raises on an empty class."""
        _check_counts(self.counts)
        return self.sq_dev / self.counts


def spearman(x: ArrayLike | list[float], y: ArrayLike | list[float]) -> tuple[float, float]:
    """Spearman's rank correlation rho = Pearson correlation of the ranks, and its two-sided p-value
    (``scipy.stats.spearmanr``; scipy is imported only here, as it takes a second to load)."""
    from scipy.stats import spearmanr

    result = spearmanr(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return float(result.statistic), float(result.pvalue)
