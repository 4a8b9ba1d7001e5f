"""Post-hoc OOD scores computed from cached features, logits and the last layer.

Sign convention: every score here is oriented so that a **higher score means more in-distribution (ID)**,
the direction of Jingkang50/OpenOOD and of scikit-learn's ``score_samples``. kkirchheim/pytorch-ood
returns outlier scores (higher = OOD), the opposite sign; where a formula is ported from there it is
negated once and the docstring says so. ``helpers.metrics`` treats OOD as the positive class and flips
the sign in exactly one place.

Each score is a small estimator with scikit-learn habits: hyper-parameters are ``__init__`` keywords
stored as given; ``fit(train_features, train_logits, train_labels, fc_weight, fc_bias)`` learns from
ID training data and returns ``self``; learned state ends in ``_``; ``score(features, logits)`` returns
a 1-D float64 numpy array, one value per row. Scores that learn nothing (MSP, MaxLogit, Energy, GEN)
still have ``fit``, so every score is used the same way. ``SCORES`` maps names to classes.

Notation (book, chapter "OOD scores"): ``h`` features (N, D), ``z`` logits (N, K), last layer
``W`` (K, D) and ``b`` (K,), class means ``mu_c`` (K, D), within-class covariance ``Sigma_W`` (D, D).
Inputs may be numpy arrays or torch tensors; computations run on the CPU in float64, except the large
matrix products of scoring in ViM and KNN, which run in ``compute_dtype`` (float32 by default; KNN first
screens its candidates with an exact bound on a bfloat16 product where the CPU multiplies bf16 natively; second
moments, eigendecompositions and pseudo-inverses of every fit stay in float64). ``benchmarks/bench_scores.py`` and
``tests/test_ood.py`` check that every float32 choice leaves the AUROC within 1e-6 of float64; set
``score.compute_dtype = torch.float64`` on an instance to reproduce the all-float64 numbers.
"""

from __future__ import annotations

import inspect
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from helpers.stats import ArrayLike, as_labels, as_tensor, class_means, within_class_cov

_CHUNK_ELEMENTS = 2**22     # entries of one (rows x training samples) similarity block in KNN


def _tensor(x: ArrayLike, name: str) -> Tensor:
    """Finite float64 CPU tensor (NaN/inf rejected by ``helpers.stats.as_tensor``)."""
    return as_tensor(x, name=name).cpu()


def _check_matrix(t: Tensor, name: str, cols: int | None = None, what: str = "columns") -> None:
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, {what}); got shape {tuple(t.shape)}.")
    if cols is not None and t.shape[1] != cols:
        raise ValueError(f"{name} has {t.shape[1]} {what}, expected {cols}; pass arrays from the same model.")


def _check_positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}.")


def _check_int(value: Any, name: str, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


def _check_percentile(value: float, name: str = "percentile", high_open: bool = False) -> None:
    ok = 0 <= value < 100 if high_open else 0 <= value <= 100
    if not ok:
        raise ValueError(f"{name} must lie in [0, 100{')' if high_open else ']'}; got {value!r}.")


def not_fitted(message: str) -> Exception:
    """scikit-learn's ``NotFittedError`` (a ValueError and AttributeError), imported only when it is raised."""
    from sklearn.exceptions import NotFittedError

    return NotFittedError(message)


def _param_names(cls: type) -> list[str]:
    """Names of the keyword hyper-parameters of ``cls.__init__`` (none for ``object.__init__``)."""
    if cls.__init__ is object.__init__:
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and p.kind in kinds]


def _second_moment(x: Tensor) -> Tensor:
    """Second moment (1/N) x^T x = C + m m^T, (D, D) float64, m the mean and C the covariance about it.

    Always float64: it feeds an eigendecomposition whose small eigenvalues set ViM's residual space and
    NECO's cut, and a float32 product rounds at ~1e-7 of the largest eigenvalue, enough to rotate that space
    when the tail's gaps are smaller (a small network far from ViM's origin). One product per fit, so the
    cost is a second or so at 50,000 x 512 on a CPU. Centring first keeps the rounding at the spread's scale.
    """
    x = x.to(torch.float64)
    m = x.mean(dim=0)                                                    # (D,)
    c = x - m                                                            # (N, D) centred
    return c.T @ c / x.shape[0] + torch.outer(m, m)


def energy(z: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy T log sum_k exp(z_k / T), shape (N,) (the book's eq. eq-energy)."""
    return temperature * torch.logsumexp(z / temperature, dim=1)


class OODScore:
    """Base class of all scores: ``fit`` checks and stores shapes, ``score`` checks inputs.

    Subclasses implement ``_fit(h, z, y, W, b)`` and ``_score(h, z) -> (N,)`` on float64 tensors.
    ``compute_dtype`` is the dtype of a subclass's large matrix products (a class attribute, not a
    hyper-parameter; scores that do not use it ignore it).
    """

    compute_dtype: torch.dtype = torch.float32

    def _fit(self, h: Tensor, z: Tensor, y: Tensor, W: Tensor, b: Tensor) -> None:
        """Learn state from ID training data; nothing to learn by default."""

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        raise NotImplementedError

    def fit(self, train_features: ArrayLike, train_logits: ArrayLike, train_labels: ArrayLike,
            fc_weight: ArrayLike, fc_bias: ArrayLike) -> Self:
        """Learn from ID training features h (N, D), logits z (N, K), labels y (N,), W (K, D), b (K,)."""
        h, z = _tensor(train_features, "train_features"), _tensor(train_logits, "train_logits")
        W, b = _tensor(fc_weight, "fc_weight"), _tensor(fc_bias, "fc_bias").reshape(-1)
        _check_matrix(W, "fc_weight", what="feature dimensions")
        K, D = W.shape
        _check_matrix(h, "train_features", D, "feature dimensions")
        _check_matrix(z, "train_logits", K, "classes (rows of fc_weight)")
        if b.numel() != K:
            raise ValueError(f"fc_bias has {b.numel()} entries, fc_weight has {K} rows; pass the same layer's bias.")
        if z.shape[0] != h.shape[0] or h.shape[0] == 0:
            raise ValueError(f"got {h.shape[0]} feature rows and {z.shape[0]} logit rows; pass one of each per sample.")
        y = as_labels(train_labels, h.shape[0], K, name="train_labels")
        self._fit(h, z, y, W, b)
        self.n_features_in_, self.n_classes_ = D, K
        return self

    def score(self, features: ArrayLike, logits: ArrayLike) -> np.ndarray:
        """Score features h (N, D) and logits z (N, K); returns (N,) float64, higher = more ID."""
        if not hasattr(self, "n_features_in_"):
            raise not_fitted(f"{type(self).__name__} is not fitted yet; call fit(train_features, train_logits, "
                             "train_labels, fc_weight, fc_bias) first.")
        h, z = _tensor(features, "features"), _tensor(logits, "logits")
        _check_matrix(h, "features", self.n_features_in_, "feature dimensions")
        _check_matrix(z, "logits", self.n_classes_, "classes")
        if z.shape[0] != h.shape[0]:
            raise ValueError(f"got {h.shape[0]} feature rows and {z.shape[0]} logit rows; pass one of each per sample.")
        return self._score(h, z).cpu().numpy().astype(np.float64).reshape(-1)       # (N,)

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (as scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in _param_names(type(self))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class MSP(OODScore):
    """Maximum softmax probability max_k softmax(z)_k (Hendrycks & Gimpel, ICLR 2017).

    Derived in the book, chapter "OOD scores" (eq. eq-msp). Uses logits z (N, K) only.
    """

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        return torch.softmax(z, dim=1).max(dim=1).values


class MaxLogit(OODScore):
    """Maximum logit max_k z_k (Hendrycks et al., ICML 2022).

    Derived in the book, chapter "OOD scores" (eq. eq-maxlogit). Uses logits z (N, K) only.
    """

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        return z.max(dim=1).values


class Energy(OODScore):
    """Negative free energy T log sum_k exp(z_k / T) (Liu et al., NeurIPS 2020).

    Derived in the book, chapter "OOD scores" (eq. eq-energy). pytorch-ood's ``EnergyBased`` returns
    the energy itself (minus this). Uses logits z (N, K) only.

    Args:
        temperature: T > 0.
    """

    def __init__(self, temperature: float = 1.0):
        _check_positive(temperature, "temperature")
        self.temperature = temperature

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        return energy(z, self.temperature)


def _pinv_sqrt(sigma: Tensor) -> Tensor:
    """L (D, r) with L L^T = Sigma^+, from eigh with the relative cut-off D * eps * lambda_max.

    Directions with (numerically) zero variance, e.g. dead feature dimensions, are dropped, as
    ``torch.linalg.pinv(hermitian=True)`` drops them.
    """
    lam, V = torch.linalg.eigh(sigma)                                    # (D,), (D, D)
    if lam.max() <= 0:
        raise ValueError("the within-class covariance is zero; Mahalanobis needs spread within the classes.")
    keep = lam > lam.max() * sigma.shape[0] * torch.finfo(sigma.dtype).eps
    return V[:, keep] / lam[keep].sqrt()                                 # (D, r)


class Mahalanobis(OODScore):
    """Minus the smallest squared Mahalanobis distance to a class mean (Lee et al., NeurIPS 2018).

    S(h) = -min_c (h - mu_c)^T Sigma_W^+ (h - mu_c), with class means mu_c and one tied within-class
    covariance Sigma_W from the training features. Derived in the book, chapter "OOD scores"
    (eq. eq-mahalanobis).

    Here Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T (divided by N, no ridge), and Sigma_W^+
    is its pseudo-inverse from ``eigh`` with the relative cut-off D * eps * lambda_max, all in float64. The
    pseudo-inverse keeps singular covariances (dead feature dimensions, N - K < D) usable; a test feature's
    component along a zero-variance direction is then ignored. Vectorised by whitening: with
    L L^T = Sigma_W^+, the distance is ||h L - mu_c L||, expanded as one matrix product.

    pytorch-ood 0.4.0 (the version the tests compare with) differs in three ways, none of which changes the
    ranking beyond rounding: it accumulates the unnormalised scatter matrix N Sigma_W, adds a ridge
    1e-6 I and inverts it with ``torch.linalg.inv`` in float32; and it returns +1/2 of the squared
    distance (higher = OOD). Its score is therefore about -S / (2 N) (``tests/test_ood.py`` checks this).
    """

    def _fit(self, h: Tensor, z: Tensor, y: Tensor, W: Tensor, b: Tensor) -> None:
        self.means_ = class_means(h, y, num_classes=W.shape[0])          # (K, D)
        sigma_w = within_class_cov(h, y, self.means_)                    # (D, D)
        self.whitener_ = _pinv_sqrt(sigma_w)                             # (D, r)
        self.precision_ = self.whitener_ @ self.whitener_.T              # (D, D) = Sigma_W^+
        self.whitened_means_ = self.means_ @ self.whitener_              # (K, r)

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        hw, mw = h @ self.whitener_, self.whitened_means_                # (N, r), (K, r)
        # ||hw - mw_c||^2 = ||hw||^2 - 2 hw . mw_c + ||mw_c||^2: one matrix product (float64, clamped at 0)
        d2 = (hw * hw).sum(1, keepdim=True) - 2 * hw @ mw.T + (mw * mw).sum(1)  # (N, K)
        return -d2.clamp_min(0).min(dim=1).values


_VIM_WIDE = ((2048, 1000), (768, 512))     # (min D, d) of the ViM paper's code for wide features


def vim_default_dim(n_features: int, n_classes: int | None = None) -> int:
    """ViM's principal dimension d: 1000 if D >= 2048, 512 if D >= 768, else D // 2, raised to K if K < D.

    The wide-feature values are those of the paper's code (haoqiwang/vim, benchmark.py: 1000 for
    D >= 2048, else 512, for its 768- and 2048-wide backbones). Below D = 768 there is no published rule
    (512 would leave no residual at D = 512; pytorch-ood requires d and falls back to D // 2 only when d
    exceeds D); we keep half the directions, as the paper's 1000 of 2048 does. With K < D classes,
    d is raised to K so that the K directions of the class means about u, (mu_c - u), stay in the
    principal space: under collapse the residual of ID features is then zero (the book, chapter
    "OOD scores", section "ViM"). With K >= D no such d < D exists and D // 2 is kept.
    """
    for width, d in _VIM_WIDE:
        if n_features >= width:
            return d
    d = n_features // 2
    return max(d, n_classes) if n_classes is not None and n_classes < n_features else d


class ViM(OODScore):
    """Virtual-logit matching: log sum_k exp(z_k) - alpha ||(I - P P^T)(h - u)|| (Wang et al., CVPR 2022).

    Origin u = -W^+ b (eq. eq-vim-origin); P (D, d) holds the eigenvectors with the d largest eigenvalues
    of (1/N) sum_i (h_i - u)(h_i - u)^T over the training features, not centred at their mean, as the
    paper's code (EmpiricalCovariance(assume_centered=True)); residual r(h) = ||(I - P P^T)(h - u)||
    (eq. eq-vim-residual); alpha = mean_i max_k z_ik / mean_i r(h_i) over the training set
    (eq. eq-vim-alpha); score in eq. eq-vim. Derived in the book, chapter "OOD scores".
    pytorch-ood's ``ViM`` returns minus this score.

    The second moment and its eigendecomposition are float64 (``_second_moment``); the
    residual products run in ``compute_dtype``.

    Args:
        dim: principal dimension d, 1 <= d < D. ``None`` uses ``vim_default_dim(D, K)``: the paper's
            code's values for D >= 768, else max(D // 2, K) when K < D and D // 2 otherwise.
    """

    def __init__(self, dim: int | None = None):
        if dim is not None:
            _check_int(dim, "dim")
        self.dim = dim

    def _fit(self, h: Tensor, z: Tensor, y: Tensor, W: Tensor, b: Tensor) -> None:
        D = h.shape[1]
        d = vim_default_dim(D, W.shape[0]) if self.dim is None else self.dim
        if not 1 <= d < D:
            raise ValueError(f"dim must be below the feature size: got dim={d} for D={D} features.")
        self.origin_ = -torch.linalg.pinv(W) @ b                          # (D,)
        x = h - self.origin_                                             # (N, D)
        _, V = torch.linalg.eigh(_second_moment(x))                     # ascending eigenvalues
        self.null_space_ = V[:, : D - d]                                 # (D, D - d), I - P P^T = NS NS^T
        residual = self._residual(h)                                     # (N,)
        if residual.mean() <= 0:
            raise ValueError("training features have no residual outside the principal space; lower dim.")
        self.alpha_ = float(z.max(dim=1).values.mean() / residual.mean())
        self.dim_ = d

    def _residual(self, h: Tensor) -> Tensor:
        """||(h - u) NS||, (N,) float64, the product in ``compute_dtype``."""
        ns = self.null_space_.to(self.compute_dtype)
        return ((h - self.origin_).to(self.compute_dtype) @ ns).norm(dim=1).to(torch.float64)

    def residual(self, features: ArrayLike) -> np.ndarray:
        """Residual norms r(h) = ||(I - P P^T)(h - u)||, (N,) (eq. eq-vim-residual)."""
        if not hasattr(self, "null_space_"):
            raise not_fitted("ViM is not fitted yet; call fit(...) first.")
        h = _tensor(features, "features")
        _check_matrix(h, "features", self.null_space_.shape[0], "feature dimensions")
        return self._residual(h).cpu().numpy()

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        return torch.logsumexp(z, dim=1) - self.alpha_ * self._residual(h)


class NECO(OODScore):
    """Neural-collapse OOD score ||P^T h~|| / ||h~||, optionally times max_k z_k (Ben Ammar et al., ICLR 2024).

    h~ = (h - mu_G) / s is the training-centred feature, divided by the per-feature training standard
    deviation s when ``standardize`` (else s = 1); P (D, d) holds, as columns, the top-d principal
    directions of the training h~. Derived in the book, chapter "OOD scores" (eq. eq-neco; eq. eq-neco-maxlogit with the
    max logit).

    Variants. The defaults (``standardize=True, maxlogit=False``) are the variant of the paper's ResNet-18
    rows (Table 2): the authors' code z-scores the features (StandardScaler, then sklearn PCA; numerator
    over the PCA coordinates, denominator ||h~||) for every backbone and multiplies by the max logit only
    for non-ResNet backbones, and section 4.1 motivates the max-logit calibration by vision transformers.
    ``NECOMaxLogit`` (registry name "neco_maxlogit") is the max-logit variant of eq. eq-neco-maxlogit.
    ``standardize=False`` only centres at mu_G, the geometry in which neural collapse is defined; the ratio
    stays in [0, 1] either way. A feature equal to mu_G scores 0. The second moment and its
    eigendecomposition are float64; the projections of ``score`` run in float64
    (cheap, and equal to ``helpers.protocol.neco_all_dims``).

    Args:
        dim: number d of principal components, 1 <= d <= D; ``None`` chooses by ``explained_variance``.
        explained_variance: in (0, 1]; the smallest d whose cumulative explained variance reaches it.
        standardize: z-score the features with training statistics before PCA (the paper's code).
        maxlogit: multiply the ratio by the max logit (eq. eq-neco-maxlogit).

    Learned: ``dim_`` (chosen d) and ``explained_variance_ratio_``, the **cumulative** explained-variance
    curve (D,) (entry j is the fraction kept by the top j + 1 components), for sweeps over d.
    """

    def __init__(self, dim: int | None = None, explained_variance: float = 0.9, standardize: bool = True,
                 maxlogit: bool = False):
        if dim is not None:
            _check_int(dim, "dim")
        if not 0 < explained_variance <= 1:
            raise ValueError(f"explained_variance must lie in (0, 1]; got {explained_variance!r}.")
        self.dim, self.explained_variance = dim, explained_variance
        self.standardize, self.maxlogit = standardize, maxlogit

    def _fit(self, h: Tensor, z: Tensor, y: Tensor, W: Tensor, b: Tensor) -> None:
        D = h.shape[1]
        if self.dim is not None and self.dim > D:
            raise ValueError(f"dim must be at most the feature size: got dim={self.dim} for D={D} features.")
        self.mean_ = h.mean(dim=0)                                       # (D,) mu_G
        std = h.std(dim=0, unbiased=False)
        self.scale_ = torch.where(std > 0, std, 1.0) if self.standardize else torch.ones(D, dtype=h.dtype)
        lam, V = torch.linalg.eigh(_second_moment((h - self.mean_) / self.scale_))  # ascending
        lam, V = lam.flip(0).clamp_min(0), V.flip(1)                     # descending
        if lam.sum() <= 0:
            raise ValueError("training features have zero variance; NECO needs spread in the features.")
        cumulative = (lam.cumsum(0) / lam.sum()).numpy()                 # (D,)
        auto = int(np.searchsorted(cumulative, self.explained_variance - 1e-12)) + 1
        self.dim_ = min(auto, D) if self.dim is None else self.dim
        self.explained_variance_ratio_ = cumulative
        self.components_ = V[:, : self.dim_].T                           # (d, D)

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        x = (h - self.mean_) / self.scale_                               # (N, D)
        ratio = (x @ self.components_.T).norm(dim=1) / x.norm(dim=1).clamp_min(1e-300)  # (N,)
        return ratio * z.max(dim=1).values if self.maxlogit else ratio


class NECOMaxLogit(NECO):
    """NECO times the max logit, max_k z_k ||P^T h~|| / ||h~|| (eq. eq-neco-maxlogit; the paper's section 4.1).

    ``NECO`` with ``maxlogit=True`` by default; registered as "neco_maxlogit", the labelled extra beside
    the paper's ResNet-18 variant "neco". A sensible ID score while the max logit is positive.
    """

    def __init__(self, dim: int | None = None, explained_variance: float = 0.9, standardize: bool = True,
                 maxlogit: bool = True):
        super().__init__(dim=dim, explained_variance=explained_variance, standardize=standardize,
                         maxlogit=maxlogit)


_BF16_ROUNDOFF = 2.0**-8    # unit roundoff of bfloat16 (8 significant bits)
_PREFILTER_EXTRA = 64       # candidates beyond k recomputed exactly after the bfloat16 pass, per query
_RERANK_ROWS = 256          # queries per bfloat16 product and per exact re-ranking product
_BLOCK = 16                 # columns per block of the candidate search (_top_candidates)


def bf16_products_are_fast() -> bool:
    """True on CPUs that multiply bfloat16 natively (AVX512-BF16 or AMX), where a bfloat16 product
    costs about half a float32 one (``benchmarks/bench_scores.py``)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _kth_exact(q: Tensor, bank: Tensor, k: int) -> Tensor:
    """k-th largest of each row of q @ bank^T, (N,), by chunks of the full product in q's dtype."""
    buffer = q.new_empty(min(_RERANK_ROWS, q.shape[0]), bank.shape[0])          # reused: no page faults
    kth = [torch.mm(c, bank.T, out=buffer[:len(c)]).topk(k, dim=1, sorted=False).values.min(dim=1).values
           for c in q.split(_RERANK_ROWS)]
    return torch.cat(kth) if kth else q.new_zeros(0)


class _Bf16Bound:
    """|s - s^| <= a + c|s^| for s = q.x and s^ = bf16(fl32(q~.x~)), q~ = bf16(q), x~ = bf16(x):
    a = |q~||x - x~| + |q - q~|(|x~| + |x - x~|) + 2 D u32 |q~||x~| (input rounding by Cauchy-Schwarz,
    float32 accumulation) and c = u/(1 - u) (output rounding), maxima over the bank rows x."""

    def __init__(self, bank: Tensor, bank16: Tensor):
        rounded = bank16.float()
        self.dx, self.nx = (bank - rounded).norm(dim=1).max(), rounded.norm(dim=1).max()
        self.c = _BF16_ROUNDOFF / (1 - _BF16_ROUNDOFF)

    def slack(self, q: Tensor, q16: Tensor) -> Tensor:
        """a (N,) for the queries q (N, D) and q16 = bf16(q)."""
        dq, nq = (q - q16.float()).norm(dim=1), q16.float().norm(dim=1)
        return nq * self.dx + dq * (self.nx + self.dx) + 2 * q.shape[1] * 2.0**-24 * nq * self.nx

    def threshold(self, q: Tensor, q16: Tensor, kth16: Tensor) -> Tensor:
        """t (N,): every bank row whose s can reach the exact k-th largest s_k has s^ >= t.

        The k rows with s^ >= kth16 give s_k >= L = kth16 - a - c|kth16|; s >= L needs g(s^) >= L - a for
        the increasing g(s) = s + c|s|, so t = g^-1(L - a)."""
        a = self.slack(q, q16)
        v = kth16 - a - self.c * kth16.abs() - a                                # L - a
        return torch.where(v >= 0, v / (1 + self.c), v / (1 - self.c))


def _top_candidates(s: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """The m largest entries of each row of s (rows, N) and their columns, by blocks: with B = ``_BLOCK``
    and nb = N // B, column j < nb B belongs to block j mod nb. The m blocks with the largest maxima, and
    the last N mod B columns, hold the m largest entries unless one ties with or exceeds the (m+1)-th
    block maximum, so one ``topk`` over about m B entries replaces one over all N (about 5x faster).

    Returns values (rows, m) sorted, their columns (rows, m), and the largest entry outside the chosen
    blocks (rows,), which the caller compares with the smallest value it needs."""
    rows, n = s.shape
    nb = n // _BLOCK
    maxima = s[:, :nb * _BLOCK].unflatten(1, (_BLOCK, nb)).amax(dim=1)          # (rows, nb), strided blocks
    chosen = min(m, nb)
    block_max, blocks = maxima.topk(min(chosen + 1, nb), dim=1)                 # sorted
    outside = block_max[:, chosen] if nb > chosen else torch.full_like(block_max[:, 0], -torch.inf)
    cols = (blocks[:, :chosen, None] + torch.arange(_BLOCK) * nb).flatten(1)   # (rows, chosen B)
    cols = torch.cat([cols, torch.arange(nb * _BLOCK, n).expand(rows, -1)], dim=1)
    top, pos = s.gather(1, cols).topk(m, dim=1)
    return top, cols.gather(1, pos), outside


def kth_similarity(q: Tensor, bank: Tensor, k: int, prefilter: bool) -> Tensor:
    """k-th largest similarity q_i . x_j over the bank rows x_j, (N,), exact in the dtype of q and bank.

    Without ``prefilter``: the full product by chunks, then ``topk``. With it: one bfloat16 product bounds
    every similarity (``_Bf16Bound``) and keeps each query's k + 64 largest as candidates; these are
    recomputed in q's dtype, by chunks of queries sorted by their nearest candidate (neighbours of similar
    queries coincide, so each chunk multiplies by the union of its candidates only). That is the exact
    k-th largest whenever every row that can reach it is a candidate; a query where one might not be gets
    the full product. Equal to the full product up to float rounding.
    """
    m = min(k + _PREFILTER_EXTRA, bank.shape[0])
    if not prefilter or bank.shape[0] < 4 * m:
        return _kth_exact(q, bank, k)
    bank16 = bank.to(torch.bfloat16)
    bound = _Bf16Bound(bank, bank16)
    candidates, unsure = [], []
    buffer = bank16.new_empty(min(_RERANK_ROWS, q.shape[0]), bank.shape[0])     # reused: no page faults
    for c in q.split(_RERANK_ROWS):
        c16 = c.to(torch.bfloat16)
        s16 = torch.mm(c16, bank16.T, out=buffer[:len(c)])                       # (rows, N_train)
        top16, idx, outside = _top_candidates(s16, m)                            # (rows, m), sorted
        threshold = bound.threshold(c, c16, top16[:, k - 1].float())
        unsure.append(torch.maximum(top16[:, -1], outside).float() >= threshold)  # a candidate missed?
        candidates.append(idx)
    idx, unsure = torch.cat(candidates), torch.cat(unsure)                      # (N, m), (N,)
    kth = q.new_empty(q.shape[0])
    for rows in idx[:, 0].argsort().split(_RERANK_ROWS):
        union, position = idx[rows].unique(return_inverse=True)                  # (U,), (rows, m)
        sims = q[rows] @ bank[union].T                                           # (rows, U)
        kth[rows] = sims.gather(1, position).topk(k, dim=1).values[:, -1]
    if unsure.any():
        kth[unsure] = _kth_exact(q[unsure], bank, k)
    return kth


class KNN(OODScore):
    """Minus the distance to the k-th nearest training feature, on the unit sphere (Sun et al., ICML 2022).

    S(h) = -||h/||h|| - h_(k)/||h_(k)|| || with h_(k) the k-th nearest normalised training feature.
    Derived in the book, chapter "OOD scores" (eq. eq-knn). pytorch-ood's ``KNN`` returns the distance
    (minus this). Computed with ||a - b||^2 = 2 - 2 a.b for unit vectors by ``kth_similarity``: matrix
    products of normalised features in ``compute_dtype`` (float32) and ``torch.topk``; where bfloat16
    products are fast (``prefilter``), a bf16 product first bounds every similarity and only each query's
    candidates are recomputed in float32, which gives the same k-th neighbour (``tests/test_ood.py``).

    Args:
        k: neighbour rank, 1 <= k <= number of training samples (the paper uses 50 on CIFAR-10).
    """

    prefilter: bool | None = None    # bfloat16 pass first (None: where bf16 products are fast); same values

    def __init__(self, k: int = 50):
        _check_int(k, "k")
        self.k = k

    def _fit(self, h: Tensor, z: Tensor, y: Tensor, W: Tensor, b: Tensor) -> None:
        if self.k > h.shape[0]:
            raise ValueError(f"k={self.k} exceeds the training size ({h.shape[0]} samples); lower k.")
        # rows grouped by class, so that the candidate neighbours of similar queries are near each other
        self.bank_ = F.normalize(h[y.argsort(stable=True)], dim=1)       # (N_train, D) float64

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        prefilter = self.prefilter if self.prefilter is not None else bf16_products_are_fast()
        q = F.normalize(h, dim=1).to(self.compute_dtype)                 # (N, D)
        bank = self.bank_.to(self.compute_dtype)                         # (N_train, D)
        sim = kth_similarity(q, bank, self.k, prefilter and self.compute_dtype == torch.float32)
        return -(2 - 2 * sim.to(torch.float64)).clamp_min(0).sqrt()


class ReAct(OODScore):
    """Energy of logits recomputed from clipped features, min(h, c) W^T + b (Sun et al., NeurIPS 2021).

    c is the ``percentile``-th percentile of all training activations. Derived in the book, chapter
    "OOD scores" (eq. eq-react). The logits passed to ``score`` are only shape-checked.

    Args:
        percentile: in [0, 100] (the paper uses 90).
        temperature: T > 0 of the energy.
    """

    def __init__(self, percentile: float = 90, temperature: float = 1.0):
        _check_percentile(percentile)
        _check_positive(temperature, "temperature")
        self.percentile, self.temperature = percentile, temperature

    def _fit(self, h: Tensor, z: Tensor, y: Tensor, W: Tensor, b: Tensor) -> None:
        self.threshold_ = float(np.percentile(h.numpy(), self.percentile))
        self.weight_, self.bias_ = W, b

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        z_clipped = h.clamp(max=self.threshold_) @ self.weight_.T + self.bias_  # (N, K)
        return energy(z_clipped, self.temperature)


class ASH(OODScore):
    """ASH-S: energy of logits from pruned and rescaled features (Djurisic et al., ICLR 2023).

    Per sample, keep the top k = D - round(D p / 100) activations, zero the rest and multiply by
    exp(s1 / s2), s1 and s2 the activation sums before and after pruning; then logits via W, b and
    the energy. Derived in the book, chapter "OOD scores" (eq. eq-ash). Meant for non-negative
    (post-ReLU) features. The logits passed to ``score`` are only shape-checked.

    Args:
        percentile: p in [0, 100), the share of activations pruned (the paper sweeps 65 to 90).
    """

    def __init__(self, percentile: float = 90):
        _check_percentile(percentile, high_open=True)
        self.percentile = percentile

    def _fit(self, h: Tensor, z: Tensor, y: Tensor, W: Tensor, b: Tensor) -> None:
        D = h.shape[1]
        self.n_kept_ = D - int(np.round(D * self.percentile / 100.0))
        if self.n_kept_ < 1:
            raise ValueError(f"percentile={self.percentile} prunes all {D} activations; lower it.")
        self.weight_, self.bias_ = W, b

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        top, idx = h.topk(self.n_kept_, dim=1)                           # (N, k)
        s1, s2 = h.sum(dim=1), top.sum(dim=1)                            # (N,)
        ratio = torch.where(s2 != 0, s1 / torch.where(s2 != 0, s2, 1.0), 0.0)
        shaped = torch.zeros_like(h).scatter_(1, idx, top) * ratio.exp()[:, None]  # (N, D)
        return energy(shaped @ self.weight_.T + self.bias_)


class GEN(OODScore):
    """Generalized entropy -sum_{top M} p_j^gamma (1 - p_j)^gamma of the softmax (Liu et al., CVPR 2023).

    Derived in the book, chapter "OOD scores" (eq. eq-gen). pytorch-ood returns the mean of the terms
    (higher = OOD): same ranking, opposite sign. Uses logits z (N, K) only.

    Args:
        gamma: exponent > 0 (paper: 0.1).
        M: number of largest probabilities used, 1 <= M <= K; ``None`` means min(100, K).
    """

    def __init__(self, gamma: float = 0.1, M: int | None = None):
        _check_positive(gamma, "gamma")
        if M is not None:
            _check_int(M, "M")
        self.gamma, self.M = gamma, M

    def _fit(self, h: Tensor, z: Tensor, y: Tensor, W: Tensor, b: Tensor) -> None:
        K = W.shape[0]
        if self.M is not None and self.M > K:
            raise ValueError(f"M={self.M} exceeds the number of classes K={K}; lower M.")
        self.M_ = min(100, K) if self.M is None else self.M

    def _score(self, h: Tensor, z: Tensor) -> Tensor:
        p = torch.softmax(z, dim=1).topk(self.M_, dim=1).values         # (N, M)
        return -(p.pow(self.gamma) * (1 - p).pow(self.gamma)).sum(dim=1)


SCORES: dict[str, type[OODScore]] = {
    "msp": MSP, "maxlogit": MaxLogit, "energy": Energy, "mahalanobis": Mahalanobis, "vim": ViM,
    "neco": NECO, "knn": KNN, "react": ReAct, "ash": ASH, "gen": GEN, "neco_maxlogit": NECOMaxLogit,
}


def make_score(name: str, **options: Any) -> OODScore:
    """Build ``SCORES[name](**options)``, with ValueErrors naming the valid choices."""
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; choose one of {sorted(SCORES)}.")
    cls = SCORES[name]
    valid = _param_names(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown options {unknown} for {name!r}; valid options are {valid}.")
    return cls(**options)
