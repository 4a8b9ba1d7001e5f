"""Neural Collapse metrics NC1-NC5 on cached features (Papyan, Han & Donoho, PNAS 2020).

Notation follows the book's chapter "Neural collapse": ``h`` features (N, D), ``y`` labels (N,),
``K`` classes, ``mu_c`` class means (K, D), ``mu_G`` global mean (D,), ``M~`` centred means
``mu_c - mu_G`` (K, D), ``W`` classifier weights (K, D) with rows ``w_c``, ``Sigma_W`` and ``Sigma_B`` (D, D).

Conventions:

* ``mu_G`` is the mean of all samples (``ClassStats.global_mean``), as Papyan et al. define it; with
  balanced classes it equals the mean of the class means (which their reference code averages).
* Every metric tends to 0 under collapse, except the accuracies.
* Inputs are converted to float64 (``stats.as_tensor``, which also rejects NaN/inf); labels go through
  the one label check ``stats.as_labels``.
* Batch (``nc_metrics``) and streaming (``nc_metrics_from_stats``) feed the same metric functions,
  so both give the same numbers up to rounding.
* Degenerate geometry (two identical class means, a zero centred mean) gives ``inf`` or ``nan``
  rather than an error, so a loop over layers or checkpoints keeps running.

Figures cited are those of Papyan, Han & Donoho (2020): Fig. 2 equinorm, Fig. 3 Std of the cosines,
Fig. 4 maximal-angle equiangularity, Fig. 5 self-duality, Fig. 6 NC1, Fig. 7 NCC mismatch (NC4).

The module holds pure functions on cached tensors: nothing here calls a model or loops over
checkpoints or layers; that sweep belongs to the orchestration layer, which calls these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from helpers.stats import (
    ArrayLike,
    ClassStats,
    as_labels,
    as_tensor,
    class_means,
    class_variances,
    within_class_cov,
)

# --------------------------------------------------------------------------- input checks


def _as_features(x: ArrayLike, name: str = "features") -> Tensor:
    """Finite float64 features of shape (N, D); raises on other shapes."""
    h = as_tensor(x, name)
    if h.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array; got shape {tuple(h.shape)}. Flatten or pool first.")
    return h


def _check_num_classes(K: int) -> None:
    if K < 2:
        raise ValueError(f"neural-collapse metrics need at least two classes; got K={K}.")


def _check_weight(W: Tensor, K: int, D: int) -> None:
    if W.ndim != 2 or W.shape != (K, D):
        raise ValueError(
            f"fc_weight has shape {tuple(W.shape)}, expected (K, D) = ({K}, {D}); pass the last layer's weight matrix."
        )


def _labels_and_classes(
    labels: ArrayLike, n: int, num_classes: int | None, W: Tensor | None, z: Tensor | None, name: str = "labels"
) -> tuple[Tensor, int]:
    """Checked labels y (N,) and K: ``num_classes``, the rows of ``W`` or the logits' columns (which must
    agree), else max label + 1."""
    given = {
        "num_classes": num_classes,
        "fc_weight rows": None if W is None else W.shape[0],
        "logits columns": None if z is None or z.ndim != 2 else z.shape[1],
    }
    sizes = {k: int(v) for k, v in given.items() if v is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inconsistent number of classes: {sizes}; they must all equal K.")
    K = next(iter(sizes.values()), None)
    y = as_labels(labels, n, K, name)                                    # (N,)
    if K is None:
        K = int(y.max()) + 1 if y.numel() else 0
    _check_num_classes(K)
    return y, K


# --------------------------------------------------------------------------- geometry helpers


def _cosines(V: Tensor) -> Tensor:
    """Cosine matrix of the rows of ``V`` (K, D) -> (K, K); a zero row gives nan."""
    U = V / V.norm(dim=1, keepdim=True)                                  # (K, D) unit rows
    return U @ U.T


def _off_diagonal(C: Tensor) -> Tensor:
    """Entries c != c' of a square matrix (K, K), flattened to (K(K-1),)."""
    K = C.shape[0]
    return C[~torch.eye(K, dtype=torch.bool, device=C.device)]


def gram(M: ArrayLike, mu_g: ArrayLike | None = None) -> Tensor:
    """Cosine Gram matrix G_cc' = cos(m_c - m, m_c' - m) of centred rows, shape (K, K).

    The centre ``m`` is ``mu_g`` if given (pass the global mean mu_G for class means), else the
    mean of the rows. For a simplex ETF (eq. eq-etf) G = (K/(K-1)) I - 1/(K-1) 11^T, the "ideal"
    heatmap of the book's chapter "Neural collapse" (eq. eq-nc2-equiangular).

    Args:
        M: rows to compare, (K, D), e.g. class means mu_c or classifier rows w_c.
        mu_g: centre, (D,); default the row mean.
    """
    M = as_tensor(M, "M")
    centre = M.mean(0) if mu_g is None else as_tensor(mu_g, "mu_g")     # (D,)
    return _cosines(M - centre)


def simplex_etf(K: int, D: int | None = None) -> Tensor:
    """Rows of a standard simplex equiangular tight frame, shape (K, D).

    M = sqrt(K/(K-1)) (I_K - 11^T/K): unit-norm rows with pairwise cosine -1/(K-1), summing to 0.
    Derived in the book, chapter "Neural collapse" (eq. eq-etf); Papyan et al. (2020), Definition 1.
    For D > K the rows are padded with zeros; for D = K-1 they are written in an orthonormal basis
    of the (K-1)-dimensional subspace they span.

    Args:
        K: number of vertices (classes), at least 2.
        D: ambient dimension, at least K-1; default K.
    """
    _check_num_classes(K)
    D = K if D is None else D
    if D < K - 1:
        raise ValueError(f"a simplex ETF with K={K} vertices needs D >= K-1 = {K - 1} dimensions; got D={D}.")
    P = torch.eye(K, dtype=torch.float64) - 1.0 / K                     # (K, K) centring matrix
    if D == K - 1:
        P = torch.linalg.qr(P[:, : K - 1]).Q                            # (K, K-1) basis of 1-perp
    M = (K / (K - 1)) ** 0.5 * P                                         # (K, min(K, D))
    return torch.nn.functional.pad(M, (0, D - M.shape[1]))               # (K, D)


# --------------------------------------------------------------------------- metrics on statistics


def nc1(sigma_w: Tensor, means: Tensor, mu_g: Tensor) -> float:
    """Within-class variability collapse NC1 = Tr(Sigma_W Sigma_B^+) / K, an inverse signal-to-noise ratio.

    Derived in the book, chapter "Neural collapse" (eq. eq-nc1, eq. eq-nc1-snr, with eq. eq-sigma-w and
    eq. eq-sigma-b); Papyan et al. (2020), Figure 6, which plots Tr(Sigma_W Sigma_B^+ / C). (Their
    reference code logs the trace without the 1/C.)

    Sigma_B^+ is the pseudo-inverse restricted to the top K-1 eigenpairs of Sigma_B. Because
    sum_c n_c (mu_c - mu_G) = 0, rank Sigma_B <= min(D, K-1) (eq. eq-rank-sigma-b): Sigma_B is singular
    whenever D > K-1 and can be invertible when D <= K-1. With D >= K its K-th eigenvalue is rounding
    noise (~1e-16 relative), and inverting it, as a pinv with a loose cut could, would make NC1
    explode. Eigenvalues below the numerical rank (s < s_max * max(K, D) * eps, as in numpy's
    matrix_rank) are dropped too, e.g. when class means coincide. The eigenpairs come from the SVD of
    the centred means: Sigma_B = M~^T M~ / K = V diag(s^2 / K) V^T, so
    Tr(Sigma_W Sigma_B^+) = sum_j K v_j^T Sigma_W v_j / s_j^2. Returns inf if Sigma_B = 0.

    Args:
        sigma_w: within-class covariance Sigma_W, (D, D).
        means: class means mu_c, (K, D).
        mu_g: global mean mu_G, (D,).
    """
    K, D = means.shape
    _, s, Vh = torch.linalg.svd(means - mu_g, full_matrices=False)     # s (r,), Vh (r, D), descending
    tol = s[0] * max(K, D) * torch.finfo(s.dtype).eps
    keep = (s > tol) & (torch.arange(s.numel(), device=s.device) < K - 1)
    if not keep.any():
        return float("inf")
    lam, V = s[keep] ** 2 / K, Vh[keep]                                  # top K-1 eigenpairs of Sigma_B
    quad = ((V @ sigma_w) * V).sum(1)                                    # (r,) v_j^T Sigma_W v_j
    return float((quad / lam).sum()) / K


def cdnv(means: Tensor, variances: Tensor) -> float:
    """Class-distance normalised variance, mean over c != c' of (s_c^2 + s_c'^2) / (2 ||mu_c - mu_c'||^2).

    Derived in the book, chapter "Neural collapse" (eq. eq-cdnv); Galanti, Gyorgy & Hutter (ICLR 2022).
    s_c^2 = (1/n_c) sum_{i: y_i = c} ||h_i - mu_c||^2 is the per-class variance
    (``stats.class_variances``, streamed by ``ClassStats.class_variances``). Two identical class
    means give inf.

    Args:
        means: class means mu_c, (K, D).
        variances: per-class variances s_c^2, (K,).
    """
    d2 = torch.cdist(means, means, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (K, K)
    ratio = (variances[:, None] + variances[None, :]) / (2 * d2)        # (K, K)
    return float(_off_diagonal(ratio).mean())


def nc2_equinorm(V: Tensor) -> float:
    """Equinorm deviation Std_c ||v_c|| / Avg_c ||v_c|| of rows v_c, with the unbiased std (divisor K-1).

    Derived in the book, chapter "Neural collapse" (eq. eq-nc2-equinorm); Papyan et al. (2020), Figure 2
    (coefficient of variation of the norms). The unbiased std is what their reference code computes
    (``torch.std``); the population std would be smaller by the factor sqrt((K-1)/K).
    Pass the centred means mu_c - mu_G (NC2 for features) or the classifier rows w_c.

    Args:
        V: rows, (K, D).
    """
    norms = V.norm(dim=1)                                                # (K,)
    return float(norms.std(correction=1) / norms.mean())


def nc2_equiangular(V: Tensor) -> float:
    """Maximal-angle equiangularity ``Avg_{c != c'} abs(cos(v_c, v_c') + 1/(K-1))``.

    Derived in the book, chapter "Neural collapse" (eq. eq-nc2-equiangular); Papyan et al. (2020),
    Figure 4 ("maximal-angle equiangularity"; their Figure 3 plots the Std of the same cosines, which
    is not computed here). Zero exactly when the rows, normalised, form a simplex ETF (eq. eq-etf).

    Args:
        V: rows, (K, D): centred means mu_c - mu_G or classifier rows w_c.
    """
    K = V.shape[0]
    return float((_off_diagonal(_cosines(V)) + 1.0 / (K - 1)).abs().mean())


def nc2_maxangle(V: Tensor) -> float:
    """Nearest-neighbour angle deviation Avg_c max_{c' != c} cos(v_c, v_c') + 1/(K-1).

    The project's own measure, not a figure of Papyan et al. (2020); defined in the book, chapter
    "Neural collapse" (eq. eq-nc2-maxangle). Each row maximum is at least the row's average cosine,
    and the average cosine of K unit vectors is at least -1/(K-1), so the value is >= 0, with
    equality exactly when the normalised rows form a simplex ETF (eq. eq-etf).

    Args:
        V: rows, (K, D).
    """
    K = V.shape[0]
    C = _cosines(V).fill_diagonal_(-float("inf"))                        # (K, K)
    return float(C.max(dim=1).values.mean()) + 1.0 / (K - 1)


def nc3(W: Tensor, means: Tensor, mu_g: Tensor) -> float:
    """Self-duality NC3 = || W / ||W||_F - M~ / ||M~||_F ||_F^2, with M~ = mu_c - mu_G stacked as rows.

    Derived in the book, chapter "Neural collapse" (eq. eq-nc3); Papyan et al. (2020), Figure 5.
    Both W and M~ are (K, D), row c belonging to class c.

    Args:
        W: classifier weights, (K, D).
        means: class means mu_c, (K, D).
        mu_g: global mean mu_G, (D,).
    """
    M = means - mu_g                                                     # (K, D)
    return float(((W / W.norm() - M / M.norm()) ** 2).sum())


def _geometry(means: Tensor, mu_g: Tensor, sigma_w: Tensor, variances: Tensor, W: Tensor | None) -> dict[str, float]:
    """NC1, CDNV and NC2 (and NC2 for W plus NC3 when ``W`` is given) from class statistics."""
    M = means - mu_g                                                     # (K, D) centred means
    out = {
        "nc1": nc1(sigma_w, means, mu_g),
        "cdnv": cdnv(means, variances),
        "nc2_equinorm": nc2_equinorm(M),
        "nc2_equiangular": nc2_equiangular(M),
        "nc2_maxangle": nc2_maxangle(M),
    }
    if W is not None:
        out.update(
            nc2_equinorm_w=nc2_equinorm(W),
            nc2_equiangular_w=nc2_equiangular(W),
            nc2_maxangle_w=nc2_maxangle(W),
            nc3=nc3(W, means, mu_g),
        )
    return out


def nc_metrics_from_stats(stats: ClassStats, fc_weight: ArrayLike | None = None) -> dict[str, float]:
    """NC1, CDNV and NC2 from streaming statistics; NC2 for W and NC3 too when ``fc_weight`` is given.

    Derived in the book, chapter "Neural collapse" (eqs. eq-sigma-w, eq-sigma-b, eq-nc1, eq-cdnv,
    eq-nc2-equinorm, eq-nc2-equiangular, eq-nc3); Papyan et al. (2020). Use it for layers without
    a classifier or for feature sets too large to hold in memory.

    Keys: ``nc1``, ``cdnv``, ``nc2_equinorm``, ``nc2_equiangular``, ``nc2_maxangle`` and, with
    ``fc_weight``, ``nc2_equinorm_w``, ``nc2_equiangular_w``, ``nc2_maxangle_w``, ``nc3``.

    Args:
        stats: ``ClassStats`` accumulated over the features, K classes of dimension D.
        fc_weight: classifier weights W, (K, D), optional.
    """
    K, D = stats.sums.shape
    _check_num_classes(K)
    W = None
    if fc_weight is not None:
        W = as_tensor(fc_weight, "fc_weight").to(stats.sums.device)
        _check_weight(W, K, D)
    means = stats.means()                                                # (K, D), raises on empty classes
    return _geometry(means, stats.global_mean(), stats.within_cov(), stats.class_variances(), W)


# --------------------------------------------------------------------------- metrics on features


def ncc_predict(features: ArrayLike, means: ArrayLike, chunk_size: int = 8192) -> Tensor:
    """Nearest-class-mean prediction argmin_c ||h - mu_c||^2, shape (N,) int64.

    Derived in the book, chapter "Neural collapse" (eq. eq-nc4); Papyan et al. (2020), Figure 7.
    Uses ||h - mu_c||^2 = ||h||^2 - 2 h.mu_c + ||mu_c||^2; ||h||^2 does not depend on c and is
    dropped. Samples are processed ``chunk_size`` rows at a time, so memory stays O(chunk_size K).

    Args:
        features: features h, (N, D).
        means: class means mu_c, (K, D).
        chunk_size: rows per chunk.
    """
    h, mu = _as_features(features), _as_features(means, "means")
    if h.shape[1] != mu.shape[1]:
        raise ValueError(f"features have D={h.shape[1]} but means have D={mu.shape[1]}; they must match.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}.")
    mu_sq = (mu * mu).sum(1)                                             # (K,)
    preds = [(mu_sq - 2 * chunk @ mu.T).argmin(dim=1) for chunk in h.split(chunk_size)]  # (B,) each
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=h.device)


def heldout_predictions(h: Tensor, y: Tensor, means: Tensor, z: Tensor | None) -> dict[str, float]:
    """NCC accuracy, and with logits the network accuracy and NC4 (eq. eq-nc4)."""
    ncc = ncc_predict(h, means)                                          # (N,)
    out = {"ncc_accuracy": float((ncc == y).double().mean())}
    if z is not None:
        net = z.argmax(dim=1)                                            # (N,)
        out["accuracy"] = float((net == y).double().mean())
        out["nc4"] = float((net != ncc).double().mean())
    return out


def nc_metrics(
    features: ArrayLike,
    labels: ArrayLike,
    fc_weight: ArrayLike | None = None,
    logits: ArrayLike | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """All Neural Collapse metrics of one layer at one checkpoint.

    Derived in the book, chapter "Neural collapse" (eqs. eq-nc1, eq-cdnv, eq-nc2-equinorm,
    eq-nc2-equiangular, eq-nc3, eq-nc4); Papyan, Han & Donoho (2020); CDNV from Galanti et al. (2022).

    Keys:
        ``nc1``, ``cdnv``, ``nc2_equinorm``, ``nc2_equiangular``, ``nc2_maxangle`` and ``ncc_accuracy``
        (share of samples whose nearest class mean is their label) always. With ``fc_weight``:
        ``nc2_equinorm_w``, ``nc2_equiangular_w``, ``nc2_maxangle_w`` and ``nc3``. With ``logits``:
        ``accuracy`` (argmax logits = label) and ``nc4`` (share of samples where argmax logits differs
        from the nearest-class-mean prediction; Papyan et al. (2020), Figure 7). For earlier layers pass
        ``logits`` without ``fc_weight``.

    NC4 -> 0 follows from NC2 and NC3 only if the biases are b_c = -w_c^T mu_G + const
    (eq. eq-nc4-bias); with equal biases and mu_G not orthogonal to the class-mean span the two
    rules can disagree even under exact NC2/NC3 geometry.

    The class statistics are computed from centred features (``stats.class_means``,
    ``within_class_cov``) and fed to the same metric functions as ``nc_metrics_from_stats``.

    Args:
        features: features h, (N, D).
        labels: labels y, (N,), values in [0, K).
        fc_weight: classifier weights W, (K, D), optional.
        logits: network outputs, (N, K), optional.
        num_classes: K; default the rows of W, the columns of the logits, else max label + 1.
    """
    h = _as_features(features)                                           # (N, D)
    W = None if fc_weight is None else as_tensor(fc_weight, "fc_weight").to(h.device)
    z = None if logits is None else as_tensor(logits, "logits").to(h.device)
    y, K = _labels_and_classes(labels, h.shape[0], num_classes, W, z)
    y = y.to(h.device)                                                   # (N,)
    if W is not None:
        _check_weight(W, K, h.shape[1])
    if z is not None and z.shape != (h.shape[0], K):
        raise ValueError(f"logits have shape {tuple(z.shape)}, expected (N, K) = ({h.shape[0]}, {K}).")
    means = class_means(h, y, K)                                         # (K, D)
    sigma_w = within_class_cov(h, y, means)                              # (D, D)
    out = _geometry(means, h.mean(0), sigma_w, class_variances(h, y, means), W)
    return out | heldout_predictions(h, y, means, z)


# --------------------------------------------------------------------------- ID vs OOD (NC5)


def _id_ood_inputs(
    id_features: ArrayLike, id_labels: ArrayLike, ood_features: ArrayLike, num_classes: int | None
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Checked ID features h (N, D), labels y (N,), OOD features (N_ood, D) and K."""
    h = _as_features(id_features, "id_features")                         # (N, D)
    y, K = _labels_and_classes(id_labels, h.shape[0], num_classes, None, None, "id_labels")
    y = y.to(h.device)                                                   # (N,)
    ood = _as_features(ood_features, "ood_features").to(h.device)       # (N_ood, D)
    if ood.shape[0] == 0:
        raise ValueError("ood_features is empty; pass at least one OOD feature row.")
    if ood.shape[1] != h.shape[1]:
        raise ValueError(f"ood_features have D={ood.shape[1]} but id_features have D={h.shape[1]}; they must match.")
    return h, y, ood, K


def _id_ood_means(
    id_features: ArrayLike, id_labels: ArrayLike, ood_features: ArrayLike, num_classes: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """ID class means mu_c (K, D), ID global mean mu_G (D,) and OOD mean mu_G^OOD (D,)."""
    h, y, ood, K = _id_ood_inputs(id_features, id_labels, ood_features, num_classes)
    return class_means(h, y, K), h.mean(0), ood.mean(0)


def _mean_abs_cos(V: Tensor, u: Tensor, what: str) -> float:
    """``Avg_c abs(cos(v_c, u))`` for rows v_c of V (K, D) and one vector u (D,)."""
    if float(u.norm()) == 0.0:
        raise ValueError(f"{what} is the zero vector, so its angle to the class means is undefined.")
    cos = (V @ u) / (V.norm(dim=1) * u.norm())                           # (K,)
    return float(cos.abs().mean())


def nc5(id_features: ArrayLike, id_labels: ArrayLike, ood_features: ArrayLike, num_classes: int | None = None) -> float:
    """ID/OOD orthogonality NC5 (OrthoDev) = ``Avg_c abs(cos(mu_c, mu_G^OOD))`` on uncentred means.

    Derived in the book, chapter "Neural collapse" (eq. eq-nc5); Ben Ammar et al., "NECO: NEural
    Collapse Based Out-of-distribution detection" (ICLR 2024), Section 4. mu_c are the (uncentred)
    ID class means and mu_G^OOD the (uncentred) mean of the OOD features, as in the paper. NC5 = 0
    means the OOD *mean* is orthogonal to every ID class mean. It is a statement about one mean
    vector, not about each OOD feature, and not about the centred geometry NECO uses: NC5 = 0
    implies ``nc5_centred`` = 0 only when mu_G is orthogonal to the centred class means
    (eq. eq-nc5-implies), and neither implies a small NECO score for each OOD feature
    (eq. eq-neco-need in the book).

    Note: for non-negative (post-ReLU) features every uncentred cosine is >= 0, and typically well
    above 0 because all features share the positive orthant, so uncentred NC5 cannot reach 0 in
    practice.

    Args:
        id_features: ID features h, (N, D).
        id_labels: ID labels y, (N,).
        ood_features: OOD features, (N_ood, D), N_ood >= 1.
        num_classes: K; default max label + 1.
    """
    means, _, mu_ood = _id_ood_means(id_features, id_labels, ood_features, num_classes)
    return _mean_abs_cos(means, mu_ood, "the OOD mean mu_G^OOD")


def nc5_centred(
    id_features: ArrayLike, id_labels: ArrayLike, ood_features: ArrayLike, num_classes: int | None = None
) -> float:
    """Centred NC5 = ``Avg_c abs(cos(mu_c - mu_G, mu_G^OOD - mu_G))``, all means centred on the ID global mean.

    Derived in the book, chapter "Neural collapse" (eq. eq-nc5-centred); the project's centred variant
    of the OrthoDev of Ben Ammar et al. (ICLR 2024), not the paper's NC5 (that is ``nc5``). Centring on
    mu_G (mean of all ID features) removes the offset that all non-negative features share, so 0 is
    reachable. It is 0 exactly when the OOD mean offset mu_G^OOD - mu_G is orthogonal to
    S = span{mu_c - mu_G}, the (K-1)-dimensional ETF subspace whose share of a centred feature is the
    NECO score. What NECO needs is stronger: each centred OOD feature h - mu_G nearly orthogonal to S
    (eq. eq-neco-need). Small per-feature NECO ratios force a small centred NC5, but not conversely:
    OOD features spread inside S around a mean offset orthogonal to S give 0 here and NECO ratios
    near 1. Arguments as for :func:`nc5`.
    """
    means, mu_g, mu_ood = _id_ood_means(id_features, id_labels, ood_features, num_classes)
    return _mean_abs_cos(means - mu_g, mu_ood - mu_g, "mu_G^OOD - mu_G (OOD mean equals the ID global mean)")


def nc_with_ood_class(
    id_features: ArrayLike, id_labels: ArrayLike, ood_features: ArrayLike, num_classes: int | None = None
) -> dict[str, float]:
    """NC1 and NC2 when the OOD set is treated as an extra class K+1 (label K).

    Ben Ammar et al. (ICLR 2024), Section 4: if OOD features collapse to their own vertex, NC1 and
    NC2 stay small with K+1 classes; if they spread over the ID clusters, both grow. Computed with
    ``nc_metrics`` on the stacked features, so mu_G is the mean of all ID and OOD samples and
    Sigma_B^+ keeps the top K eigenpairs (eq. eq-nc1, eq. eq-nc2-equiangular in the book, chapter
    "Neural collapse").

    Keys: ``nc1``, ``cdnv``, ``nc2_equinorm``, ``nc2_equiangular``, ``nc2_maxangle``, ``ncc_accuracy``
    (all over K+1 classes).

    Args:
        id_features: ID features h, (N, D).
        id_labels: ID labels y, (N,), values in [0, K).
        ood_features: OOD features, (N_ood, D), N_ood >= 1.
        num_classes: K (ID classes only); default max label + 1.
    """
    h, y, ood, K = _id_ood_inputs(id_features, id_labels, ood_features, num_classes)
    y_ood = torch.full((ood.shape[0],), K, dtype=torch.long, device=h.device)  # (N_ood,) label K
    return nc_metrics(torch.cat([h, ood]), torch.cat([y, y_ood]), num_classes=K + 1)


# --------------------------------------------------------------------------- training phase


def tpt_onset(history_train_acc: Sequence[float], epochs: Sequence[int], threshold: float = 0.99) -> int | None:
    """First epoch whose training accuracy is >= ``threshold``: the start of the terminal phase of training.

    Papyan et al. (2020) define the terminal phase (TPT) as training beyond zero training error;
    ``threshold`` < 1 makes the onset robust to a few hard or mislabelled samples. Returns None if
    the threshold is never reached.

    Args:
        history_train_acc: training accuracy per recorded epoch, fractions in [0, 1].
        epochs: the matching epoch numbers.
        threshold: accuracy that marks the onset, in (0, 1].
    """
    acc = np.asarray(history_train_acc, dtype=np.float64)
    if acc.shape != (len(epochs),):
        raise ValueError(f"got {acc.size} accuracies for {len(epochs)} epochs; pass one accuracy per epoch.")
    if acc.size and (acc.min() < 0 or acc.max() > 1):
        raise ValueError("training accuracies must be fractions in [0, 1]; divide percentages by 100.")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1]; got {threshold}.")
    hits = np.flatnonzero(acc >= threshold)
    return int(epochs[hits[0]]) if hits.size else None
