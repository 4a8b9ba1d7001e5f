"""Known-answer tests for helpers.collapse (Neural Collapse metrics NC1-NC5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.collapse import (
    gram,
    nc2_equinorm,
    nc2_maxangle,
    nc5,
    nc5_centred,
    nc_metrics,
    nc_metrics_from_stats,
    nc_with_ood_class,
    ncc_predict,
    simplex_etf,
    tpt_onset,
)
from helpers.stats import ClassStats

GEOMETRY_KEYS = ["nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle"]
W_KEYS = ["nc2_equinorm_w", "nc2_equiangular_w", "nc2_maxangle_w", "nc3"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rotation(D: int, seed: int) -> torch.Tensor:
    """Random orthogonal (D, D) matrix."""
    return torch.linalg.qr(torch.randn(D, D, generator=_gen(seed), dtype=torch.float64)).Q


def _collapsed(K: int = 6, D: int = 16, n: int = 20, noise: float = 0.0, seed: int = 0):
    """Features at the vertices of a rotated, scaled simplex ETF; W the normalised means; logits h W^T."""
    mu = 3.0 * simplex_etf(K, D) @ _rotation(D, seed)                    # (K, D)
    y = torch.arange(K).repeat_interleave(n)                             # (N,) balanced
    h = mu[y] + noise * torch.randn(K * n, D, generator=_gen(seed + 1), dtype=torch.float64)
    W = mu / mu.norm(dim=1, keepdim=True)                                # (K, D)
    return h, y, W, h @ W.T


def _random_problem(K: int = 4, D: int = 12, N: int = 600, seed: int = 0, offset: float = 0.0):
    """Gaussian features with class-dependent means, unbalanced labels, random W and logits."""
    g = _gen(seed)
    y = torch.randint(0, K, (N,), generator=g)
    y[:K] = torch.arange(K)                                              # every class present
    shift = 2.0 * torch.randn(K, D, generator=g, dtype=torch.float64)
    h = offset + shift[y] + torch.randn(N, D, generator=g, dtype=torch.float64)
    W = torch.randn(K, D, generator=g, dtype=torch.float64)
    logits = h @ W.T + torch.randn(N, K, generator=g, dtype=torch.float64)
    return h, y, W, logits


# --------------------------------------------------------------------------- simplex ETF and Gram


@pytest.mark.parametrize("D", [None, 4, 5, 9])
def test_simplex_etf_unit_norm_and_equiangular(D):
    K = 5
    M = simplex_etf(K, D)
    assert M.shape == (K, K if D is None else D)
    torch.testing.assert_close(M.norm(dim=1), torch.ones(K, dtype=torch.float64))
    expected = (1 + 1 / (K - 1)) * torch.eye(K, dtype=torch.float64) - 1 / (K - 1)
    torch.testing.assert_close(M @ M.T, expected)
    torch.testing.assert_close(gram(M), expected)


def test_gram_centres_rows_before_cosines():
    M = simplex_etf(4, 6) + torch.tensor([5.0, 1, 0, 0, 0, 2], dtype=torch.float64)  # shared offset
    K = 4
    expected = (1 + 1 / (K - 1)) * torch.eye(K, dtype=torch.float64) - 1 / (K - 1)
    torch.testing.assert_close(gram(M), expected)
    torch.testing.assert_close(gram(M, mu_g=M.mean(0)), expected)


def test_simplex_etf_rejects_too_few_dimensions():
    with pytest.raises(ValueError, match="D >= K-1"):
        simplex_etf(5, 3)


# --------------------------------------------------------------------------- perfect collapse


def test_perfect_collapse_gives_zero_metrics():
    h, y, W, logits = _collapsed()
    m = nc_metrics(h, y, W, logits)
    for key in ["nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", *W_KEYS, "nc4"]:
        assert abs(m[key]) < 1e-6, key
    assert m["accuracy"] == 1.0 and m["ncc_accuracy"] == 1.0


def test_near_collapse_with_tiny_noise_keeps_nc1_small():
    h, y, W, logits = _collapsed(noise=1e-5)
    m = nc_metrics(h, y, W, logits)
    assert 0 < m["nc1"] < 1e-6
    assert m["nc2_equiangular"] < 1e-4 and m["nc3"] < 1e-6 and m["nc4"] == 0.0


def test_nc3_detects_misaligned_classifier():
    h, y, W, logits = _collapsed()
    m = nc_metrics(h, y, W.roll(1, dims=0), logits)                      # rows assigned to wrong classes
    # both normalised matrices have rows of norm 1/sqrt(K) and cosine -1/(K-1) between distinct rows
    K = W.shape[0]
    assert m["nc3"] == pytest.approx(2 * (1 + 1 / (K - 1)), rel=1e-9)
    assert m["nc2_equiangular_w"] < 1e-9                                 # W itself is still an ETF


# --------------------------------------------------------------------------- random features


def test_random_gaussian_nc1_matches_wishart_expectation():
    K, n, D = 5, 400, 200
    N = K * n
    g = _gen(3)
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randperm(N, generator=g) % K                               # balanced random labels
    logits = torch.randn(N, K, generator=g, dtype=torch.float64)
    m = nc_metrics(h, y, logits=logits)
    # E[Sigma_W] = (N-K)/N I, independent of the means; Gram of the K-1 centred means ~ Wishart(D, I/n),
    # E[inverse] = n I / (D-K). Hence E[nc1] = (N-K)/N * n (K-1) / (D-K).
    expected = (N - K) / N * n * (K - 1) / (D - K)
    assert m["nc1"] > 1
    assert m["nc1"] == pytest.approx(expected, rel=0.2)
    assert m["nc4"] == pytest.approx(1 - 1 / K, abs=0.04)               # random logits vs NCC: chance
    assert m["accuracy"] == pytest.approx(1 / K, abs=0.04)


def test_nc1_matches_numpy_pinv_with_rank_k_minus_1():
    K = 5
    h, y, _, _ = _random_problem(K=K, D=12, N=500, seed=7)               # unbalanced classes
    hn, yn = h.numpy(), y.numpy()
    means = np.stack([hn[yn == c].mean(0) for c in range(K)])
    mu_g = hn.mean(0)
    centred = hn - means[yn]
    sigma_w = centred.T @ centred / len(hn)
    sigma_b = (means - mu_g).T @ (means - mu_g) / K
    lam = np.sort(np.linalg.eigvalsh(sigma_b))[::-1]
    assert lam[K - 1] < 1e-12 * lam[0]                                   # sum_c n_c (mu_c - mu_G) = 0: rank K-1
    rcond = 0.5 * lam[K - 2] / lam[0]                                    # keeps exactly the top K-1 eigenvalues
    expected = np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=rcond, hermitian=True)) / K
    assert nc_metrics(h, y, num_classes=K)["nc1"] == pytest.approx(expected, rel=1e-8)


def test_cdnv_and_nc2_match_direct_formulas():
    K = 4
    h, y, W, _ = _random_problem(K=K, seed=11)
    m = nc_metrics(h, y, W)
    means = torch.stack([h[y == c].mean(0) for c in range(K)])
    var = torch.stack([((h[y == c] - means[c]) ** 2).sum(1).mean() for c in range(K)])
    centred = means - h.mean(0)
    ratios, devs = [], []
    for c in range(K):
        for d in range(K):
            if c != d:
                ratios.append((var[c] + var[d]) / (2 * ((means[c] - means[d]) ** 2).sum()))
                cos = torch.dot(centred[c], centred[d]) / (centred[c].norm() * centred[d].norm())
                devs.append(abs(cos + 1 / (K - 1)))
    norms = W.norm(dim=1).numpy()
    assert m["cdnv"] == pytest.approx(float(torch.stack(ratios).mean()), rel=1e-10)
    assert m["nc2_equiangular"] == pytest.approx(float(torch.stack(devs).mean()), rel=1e-10)
    assert m["nc2_equinorm_w"] == pytest.approx(norms.std(ddof=1) / norms.mean(), rel=1e-10)  # unbiased, as Papyan


def test_nc2_equinorm_uses_unbiased_std_as_papyan_reference_code():
    # norms 1, 2, 3: unbiased std 1, mean 2 -> 0.5 (the population std would give sqrt(2/3)/2 = 0.408)
    V = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))  # (K, D) orthogonal rows
    assert nc2_equinorm(V) == pytest.approx(0.5, rel=1e-12)
    h, y, _, _ = _collapsed(K=3, D=5)
    W = torch.tensor([[1.0, 0, 0, 0, 0], [0, -2.0, 0, 0, 0], [0, 0, 0, 3.0, 0]], dtype=torch.float64)
    assert nc_metrics(h, y, W)["nc2_equinorm_w"] == pytest.approx(0.5, rel=1e-12)


def test_nc2_maxangle_is_project_measure_with_known_values():
    assert nc2_maxangle(simplex_etf(5, 7)) == pytest.approx(0.0, abs=1e-12)
    # orthonormal rows: every nearest-neighbour cosine is 0, so the value is 0 + 1/(K-1)
    assert nc2_maxangle(torch.eye(4, dtype=torch.float64)) == pytest.approx(1 / 3, rel=1e-12)
    V = torch.randn(6, 4, generator=_gen(12), dtype=torch.float64)
    assert nc2_maxangle(V) > 0                                           # >= 0 for any K vectors


def test_ncc_predict_matches_direct_distances_across_chunks():
    h, y, _, _ = _random_problem(seed=5)
    means = torch.stack([h[y == c].mean(0) for c in range(4)])
    direct = torch.cdist(h, means).argmin(dim=1)
    torch.testing.assert_close(ncc_predict(h, means, chunk_size=7), direct)
    torch.testing.assert_close(ncc_predict(h, means), direct)


# --------------------------------------------------------------------------- NC1 as inverse SNR, rank of Sigma_B


def _balanced_with_exact_means(M: torch.Tensor, n: int, noise: float, seed: int):
    """Features M[y] + within-class noise whose class means are exactly the rows of M (K, D)."""
    K, D = M.shape
    y = torch.arange(K).repeat_interleave(n)
    e = noise * torch.randn(K * n, D, generator=_gen(seed), dtype=torch.float64)
    e = e - torch.stack([e[y == c].mean(0) for c in range(K)])[y]       # zero class means
    return M[y] + e, y


def test_nc1_two_classes_in_one_dimension_equals_sigma_squared_over_two():
    sigma = 0.3                                                          # book exercise ex-collapse-nc1
    h = torch.tensor([-1 - sigma, -1 + sigma, 1 - sigma, 1 + sigma], dtype=torch.float64)[:, None]
    y = torch.tensor([0, 0, 1, 1])
    assert nc_metrics(h, y)["nc1"] == pytest.approx(sigma**2 / 2, rel=1e-12)


def test_nc1_is_within_over_between_an_inverse_snr():
    M = simplex_etf(4, 6) @ _rotation(6, 1)                              # (K, D)
    h, y = _balanced_with_exact_means(M, n=50, noise=0.5, seed=2)
    base = nc_metrics(h, y)["nc1"]
    spread = nc_metrics(M[y] + 2 * (h - M[y]), y)["nc1"]                 # within-class noise x2
    apart = nc_metrics(3 * M[y] + (h - M[y]), y)["nc1"]                  # class means 3x further apart
    assert spread == pytest.approx(4 * base, rel=1e-10)
    assert apart == pytest.approx(base / 9, rel=1e-10)                   # more signal -> smaller NC1


@pytest.mark.parametrize("K, D", [(10, 5), (8, 7), (5, 10), (5, 4)])
def test_rank_of_sigma_b_is_min_of_d_and_k_minus_1(K, D):
    means = torch.randn(K, D, generator=_gen(K * 100 + D), dtype=torch.float64)  # random class means
    h, y = _balanced_with_exact_means(means, n=30, noise=1.0, seed=3)
    hn, M = h.numpy(), (means - means.mean(0)).numpy()
    sigma_b = M.T @ M / K                                                # (D, D)
    assert np.linalg.matrix_rank(sigma_b) == min(D, K - 1)
    invertible = D <= K - 1                                              # full rank D exactly then
    assert (np.linalg.eigvalsh(sigma_b).min() > 1e-8 * np.linalg.eigvalsh(sigma_b).max()) == invertible
    if invertible:                                                       # the plain inverse exists and NC1 uses it
        centred = hn - means.numpy()[y.numpy()]
        sigma_w = centred.T @ centred / len(hn)
        expected = np.trace(sigma_w @ np.linalg.inv(sigma_b)) / K
        assert nc_metrics(h, y)["nc1"] == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- NC4 and the classifier's bias


def _exact_nc2_nc3(K: int = 10, D: int = 16, offset: float = 3.0, seed: int = 0):
    """Exact NC2/NC3 geometry with mu_G != 0: features, labels, W = lambda M~ and mu_G.

    The centred means are a scaled, rotated simplex ETF, W = 0.5 M~ (NC3 with lambda = 0.5), and
    mu_G has a component along the class-mean span (along mu_1 - mu_G) plus a random part.
    """
    M = 3.0 * simplex_etf(K, D) @ _rotation(D, seed)                     # (K, D) centred means
    mu_g = offset * M[0] / M[0].norm() + torch.randn(D, generator=_gen(seed + 1), dtype=torch.float64)
    h, y = _balanced_with_exact_means(mu_g + M, n=200, noise=1.0, seed=seed + 2)
    return h, y, 0.5 * M, mu_g


def test_nc4_zero_when_bias_is_minus_w_mu_g():
    h, y, W, mu_g = _exact_nc2_nc3()
    m = nc_metrics(h, y, W, h @ W.T - W @ mu_g)                          # b = -W mu_G (eq-nc4-bias)
    assert m["nc2_equinorm"] < 1e-12 and m["nc2_equiangular"] < 1e-12 and m["nc3"] < 1e-12
    assert m["nc4"] == 0.0
    assert 0.3 < m["accuracy"] < 1.0                                     # noisy: the rules are really tested


def test_nc4_clearly_positive_with_equal_biases_under_exact_nc2_nc3():
    h, y, W, mu_g = _exact_nc2_nc3()
    m = nc_metrics(h, y, W, h @ W.T + 0.7)                               # equal biases b_c = 0.7
    assert m["nc2_equiangular"] < 1e-12 and m["nc3"] < 1e-12
    assert m["nc4"] > 0.2                                                # about 30 % of samples disagree


def test_nc4_zero_with_equal_biases_when_mu_g_orthogonal_to_class_mean_span():
    h, y, W, mu_g = _exact_nc2_nc3()
    Q = torch.linalg.qr(W.T).Q[:, : W.shape[0] - 1]                      # (D, K-1) basis of the span
    shift = Q @ (Q.T @ mu_g)                                             # part of mu_G inside the span
    m = nc_metrics(h - shift, y, W, (h - shift) @ W.T + 0.7)             # now W mu_G = 0: equal biases suffice
    assert m["nc4"] == 0.0


# --------------------------------------------------------------------------- invariance and streaming


def test_permuting_classes_leaves_metrics_unchanged():
    K = 4
    h, y, W, logits = _random_problem(K=K, seed=2)
    perm = torch.tensor([2, 0, 3, 1])                                    # old class c -> new class perm[c]
    inv = torch.argsort(perm)
    before = nc_metrics(h, y, W, logits)
    after = nc_metrics(h, perm[y], W[inv], logits[:, inv])
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == pytest.approx(before[key], rel=1e-10, abs=1e-12), key


def test_streaming_stats_equal_batch():
    K, D = 4, 12
    h, y, W, logits = _random_problem(K=K, D=D, N=1000, seed=4, offset=5.0)  # offset like ReLU features
    stats = ClassStats.empty(K, D)
    for lo, hi in [(0, 7), (7, 300), (300, 301), (301, 1000)]:            # uneven batches
        stats.update(h[lo:hi], y[lo:hi])
    batch = nc_metrics(h, y, W, logits)
    stream = nc_metrics_from_stats(stats, fc_weight=W)
    assert set(stream) == set(GEOMETRY_KEYS + W_KEYS)
    for key in stream:
        assert stream[key] == pytest.approx(batch[key], rel=1e-8), key
    assert set(nc_metrics_from_stats(stats)) == set(GEOMETRY_KEYS)


def test_streaming_cdnv_exact_far_from_origin():
    K, D = 4, 12
    h, y, _, _ = _random_problem(K=K, D=D, N=1000, seed=6, offset=1e6)  # q_c / n_c - ||mu_c||^2 would lose ~4 digits
    stats = ClassStats.empty(K, D)
    for lo, hi in [(0, 3), (3, 500), (500, 1000)]:
        stats.update(h[lo:hi], y[lo:hi])
    assert nc_metrics_from_stats(stats)["cdnv"] == pytest.approx(nc_metrics(h, y)["cdnv"], rel=1e-7)  # old: 2e-4 off


def test_without_classifier_only_feature_keys():
    h, y, _, logits = _random_problem(seed=8)
    assert set(nc_metrics(h, y)) == set(GEOMETRY_KEYS + ["ncc_accuracy"])
    assert set(nc_metrics(h, y, logits=logits)) == set(GEOMETRY_KEYS + ["ncc_accuracy", "accuracy", "nc4"])


# --------------------------------------------------------------------------- NC5 and OOD as a class


def _id_in_first_coords(K: int = 4, D: int = 10, n: int = 30, seed: int = 0):
    """ID features living in the first K coordinates, OOD features in the remaining D - K."""
    g = _gen(seed)
    y = torch.arange(K).repeat_interleave(n)
    h = torch.zeros(K * n, D, dtype=torch.float64)
    h[:, :K] = torch.eye(K, dtype=torch.float64)[y] * 4 + torch.rand(K * n, K, generator=g, dtype=torch.float64)
    ood = torch.zeros(50, D, dtype=torch.float64)
    ood[:, K:] = 1.0 + torch.rand(50, D - K, generator=g, dtype=torch.float64)
    return h, y, ood


def test_nc5_zero_when_ood_mean_orthogonal_to_class_means():
    h, y, ood = _id_in_first_coords()
    assert nc5(h, y, ood) < 1e-12


def test_nc5_one_when_ood_mean_parallel_to_class_means():
    v = torch.tensor([1.0, 2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(4)
    h = torch.tensor([1.0, 2.5, 7.0], dtype=torch.float64)[y, None] * v  # class c sits at a_c v
    noise = torch.randn(20, 5, generator=_gen(1), dtype=torch.float64)
    ood = 0.3 * v + noise - noise.mean(0)                                # OOD mean exactly 0.3 v
    assert nc5(h, y, ood) == pytest.approx(1.0, abs=1e-12)


def test_nc5_centred_removes_shared_offset():
    K, D, n = 4, 9, 25
    offset = torch.full((D,), 2.0, dtype=torch.float64)                  # all features share it
    mu = 3.0 * simplex_etf(K, D)                                         # centred means in coords 0..K-1
    y = torch.arange(K).repeat_interleave(n)
    h = offset + mu[y]
    u = torch.zeros(D, dtype=torch.float64)
    u[K + 1] = 1.5                                                       # orthogonal to every mu_c - mu_G
    ood = (offset + u).expand(10, D)
    assert nc5_centred(h, y, ood) < 1e-12
    assert nc5(h, y, ood) > 0.3                                          # the offset keeps uncentred NC5 up


def _two_class_means(mu_1, mu_2, n: int = 3):
    """Features sitting exactly at two class means (balanced), shape (2n, D), and labels."""
    h = torch.tensor([mu_1] * n + [mu_2] * n, dtype=torch.float64)
    return h, torch.tensor([0] * n + [1] * n)


def test_nc5_zero_but_centred_nc5_large_when_mu_g_lies_in_class_mean_span():
    h, y = _two_class_means([1.0, 0, 0], [3.0, 0, 0])                   # mu_G = (2, 0, 0) inside S = span{e_1}
    ood = torch.tensor([[0.0, 1, 0]], dtype=torch.float64)              # orthogonal to both uncentred means
    assert nc5(h, y, ood) == pytest.approx(0.0, abs=1e-15)
    # mu_G^OOD - mu_G = (-2, 1, 0) against +-e_1: |cos| = 2 / sqrt(5)
    assert nc5_centred(h, y, ood) == pytest.approx(2 / 5**0.5, rel=1e-12)


def test_nc5_zero_implies_centred_nc5_zero_when_mu_g_orthogonal_to_span():
    h, y = _two_class_means([1.0, 0, 1], [-1.0, 0, 1])                  # equinorm: mu_G = (0, 0, 1) is orthogonal to S
    ood = torch.tensor([[0.0, 1, 0]], dtype=torch.float64)
    assert nc5(h, y, ood) == pytest.approx(0.0, abs=1e-15)
    assert nc5_centred(h, y, ood) == pytest.approx(0.0, abs=1e-15)


def _share_in_span(x: torch.Tensor, means: torch.Tensor, mu_g: torch.Tensor) -> torch.Tensor:
    """||P_S (x - mu_G)|| / ||x - mu_G|| per row, S = span of the centred class means (NECO's ideal P)."""
    K = means.shape[0]
    Q = torch.linalg.svd((means - mu_g).T, full_matrices=False).U[:, : K - 1]  # (D, K-1) basis of S
    c = x - mu_g                                                         # (N, D)
    return (c @ Q).norm(dim=1) / c.norm(dim=1)


def test_centred_nc5_zero_does_not_make_each_ood_feature_orthogonal():
    K, D, n = 4, 9, 25
    M = 3.0 * simplex_etf(K, D)                                          # centred means in coords 0..K-1
    offset = torch.full((D,), 2.0, dtype=torch.float64)
    y = torch.arange(K).repeat_interleave(n)
    h = offset + M[y]                                                    # ID features, mu_G = offset
    u = torch.zeros(D, dtype=torch.float64)
    u[K + 1] = 0.3                                                       # small shift orthogonal to S
    ood = offset + M[y] + u                                              # OOD: the ID simplex, shifted by u
    assert nc5_centred(h, y, ood) < 1e-12                                # OOD mean offset u is orthogonal to S
    share = _share_in_span(ood, offset + M, offset)
    assert share.min() > 0.99                                            # yet every OOD feature lies almost in S
    assert _share_in_span(h, offset + M, offset).min() == pytest.approx(1.0)  # as the ID features do


def test_nc5_positive_for_nonnegative_features():
    g = _gen(9)
    h = torch.relu(torch.randn(400, 16, generator=g, dtype=torch.float64))
    y = torch.arange(400) % 4
    ood = torch.relu(torch.randn(100, 16, generator=g, dtype=torch.float64))
    assert nc5(h, y, ood) > 0.5


def test_ood_at_extra_etf_vertex_collapses_with_k_plus_1_classes():
    K, D, n = 4, 8, 10
    E = 2.0 * simplex_etf(K + 1, D) @ _rotation(D, 3)                    # (K+1, D) vertices
    y = torch.arange(K).repeat_interleave(n)
    ood = E[K].expand(n, D)                                              # OOD = its own vertex, n samples
    m = nc_with_ood_class(E[y], y, ood)
    assert m["nc1"] < 1e-10 and m["nc2_equiangular"] < 1e-10 and m["nc2_equinorm"] < 1e-10
    assert m["ncc_accuracy"] == 1.0
    spread = nc_with_ood_class(E[y], y, E[y] + E[K])                     # OOD: shifted copy of the ID clusters
    assert spread["nc1"] > 0.1 and spread["nc2_equiangular"] > 0.1


# --------------------------------------------------------------------------- terminal phase


def test_tpt_onset():
    acc = [0.5, 0.9, 0.991, 0.98, 1.0]
    epochs = [10, 20, 30, 40, 50]
    assert tpt_onset(acc, epochs) == 30
    assert tpt_onset(acc, epochs, threshold=1.0) == 50
    assert tpt_onset([0.5, 0.6], [1, 2]) is None
    with pytest.raises(ValueError, match="one accuracy per epoch"):
        tpt_onset(acc, epochs[:-1])
    with pytest.raises(ValueError, match="percentages"):
        tpt_onset([50.0, 99.5], [1, 2])


# --------------------------------------------------------------------------- errors


def test_error_class_without_samples():
    h, y, W, logits = _random_problem(K=4, seed=1)
    keep = y != 2
    with pytest.raises(ValueError, match="no samples"):
        nc_metrics(h[keep], y[keep], W, logits[keep])
    stats = ClassStats.empty(4, h.shape[1]).update(h[keep], y[keep])
    with pytest.raises(ValueError, match="no samples"):
        nc_metrics_from_stats(stats)


def test_error_mismatched_shapes():
    h, y, W, logits = _random_problem(K=4, D=12, seed=1)
    with pytest.raises(ValueError, match="labels"):
        nc_metrics(h, y[:-1], W, logits)
    with pytest.raises(ValueError, match="fc_weight"):
        nc_metrics(h, y, W[:, :-1], logits)
    with pytest.raises(ValueError, match="inconsistent number of classes"):
        nc_metrics(h, y, W, logits[:, :-1])
    with pytest.raises(ValueError, match="logits"):
        nc_metrics(h, y, W, logits[:-1])
    with pytest.raises(ValueError, match="labels must lie"):
        nc_metrics(h, y, W[:3], logits[:, :3])
    with pytest.raises(ValueError, match="fc_weight"):
        nc_metrics_from_stats(ClassStats.empty(4, 12).update(h, y), fc_weight=W[:, :-1])
    with pytest.raises(ValueError, match="must match"):
        nc5(h, y, torch.ones(3, 11))
    with pytest.raises(ValueError, match="integer class indices"):
        nc_metrics(h, y.double(), W, logits)
    with pytest.raises(ValueError, match="id_labels must lie"):
        nc5(h, y - 1, torch.ones(3, 12))


def test_error_fewer_than_two_classes():
    h = torch.randn(10, 3, generator=_gen(0), dtype=torch.float64)
    y = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="at least two classes"):
        nc_metrics(h, y)
    with pytest.raises(ValueError, match="at least two classes"):
        nc_metrics_from_stats(ClassStats.empty(1, 3).update(h, y))


def test_error_empty_ood_set_and_non_finite_input():
    h, y, _, _ = _random_problem(seed=1)
    empty = torch.zeros(0, h.shape[1])
    for fn in (nc5, nc5_centred, nc_with_ood_class):
        with pytest.raises(ValueError, match="empty"):
            fn(h, y, empty)
    bad = h.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nc_metrics(bad, y)
