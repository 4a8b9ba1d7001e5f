"""Tests for helpers.ood: API, sign convention, pytorch-ood cross-check, known answers, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import logsumexp, softmax
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from helpers import ood

K, D = 4, 16


def _gaussian_problem(seed: int = 0) -> dict[str, np.ndarray]:
    """Overlapping Gaussian classes, a well-conditioned W, moderate logits (float32-friendly)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(K, D)) * 1.5                                   # (K, D)
    A = np.eye(D) + 0.3 * rng.normal(size=(D, D))                        # noise shaping, well-conditioned
    W = 0.4 * mu + 0.1 * rng.normal(size=(K, D))                         # (K, D)
    b = 0.1 * rng.normal(size=K)

    def draw(n: int, scale: float, shrink: float) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, K, size=n)
        return shrink * mu[y] + scale * rng.normal(size=(n, D)) @ A, y

    h, y = draw(400, 1.0, 1.0)
    h_id, _ = draw(300, 1.0, 1.0)
    h_ood, _ = draw(300, 1.3, 0.7)
    return dict(h=h, y=y, z=h @ W.T + b, W=W, b=b, h_id=h_id, z_id=h_id @ W.T + b, h_ood=h_ood,
                z_ood=h_ood @ W.T + b)


@pytest.fixture(scope="module")
def gauss() -> dict[str, np.ndarray]:
    return _gaussian_problem()


@pytest.fixture(scope="module")
def collapsed() -> dict[str, np.ndarray]:
    """Neural-collapse-like toy: non-negative features near mu_c = 5 e_c, W = e_c; OOD lives in dims 12-14."""
    rng = np.random.default_rng(1)
    mu = 5.0 * np.eye(K, D)                                              # (K, D)
    W, b = np.eye(K, D), np.zeros(K)
    noise = np.concatenate([0.3 * np.ones(8), 0.01 * np.ones(D - 8)])   # per-dimension noise scale

    def id_like(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % K
        return np.abs(mu[y] + noise * rng.normal(size=(n, D))), y

    h, y = id_like(400)
    h_id, _ = id_like(20)
    h_ood = np.abs(noise * rng.normal(size=(20, D)))
    h_ood[:, 12:15] += 3.0
    return dict(h=h, y=y, z=h @ W.T + b, W=W, b=b, h_id=h_id, z_id=h_id @ W.T + b, h_ood=h_ood,
                z_ood=h_ood @ W.T + b)


def _fit(score: ood.OODScore, data: dict[str, np.ndarray]) -> ood.OODScore:
    return score.fit(data["h"], data["z"], data["y"], data["W"], data["b"])


def _f64(score: ood.OODScore) -> ood.OODScore:
    """The score with every product in float64, for formula tests at rtol 1e-9."""
    score.compute_dtype = torch.float64
    return score


def _auroc_ours(score: ood.OODScore, data: dict[str, np.ndarray]) -> float:
    s_id, s_ood = score.score(data["h_id"], data["z_id"]), score.score(data["h_ood"], data["z_ood"])
    return roc_auc_score(np.r_[np.ones(s_id.size), np.zeros(s_ood.size)], np.r_[s_id, s_ood])


# ----------------------------------------------------------------------------------------------- API


@pytest.mark.parametrize("name", sorted(ood.SCORES))
def test_api(name: str, gauss: dict[str, np.ndarray]) -> None:
    score = ood.SCORES[name]()
    with pytest.raises(NotFittedError, match=r"call fit\("):
        score.score(gauss["h_id"], gauss["z_id"])
    assert _fit(score, gauss) is score
    out = score.score(gauss["h_id"], gauss["z_id"])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (gauss["h_id"].shape[0],)
    assert np.isfinite(out).all()
    as_torch = {k: torch.from_numpy(v) for k, v in gauss.items()}
    again = _fit(ood.SCORES[name](), as_torch).score(as_torch["h_id"], as_torch["z_id"])
    np.testing.assert_array_equal(out, again)
    assert isinstance(ood.make_score(name), ood.SCORES[name])


@pytest.mark.parametrize("name", sorted(ood.SCORES))
def test_sign_id_scores_higher(name: str, collapsed: dict[str, np.ndarray]) -> None:
    # standardising would blow up the toy's near-constant dimensions 8-15, where its OOD features live
    options = {"react": {"percentile": 99}, "neco": {"standardize": False},
               "neco_maxlogit": {"standardize": False}}.get(name, {})
    score = _fit(ood.make_score(name, **options), collapsed)
    s_id = score.score(collapsed["h_id"], collapsed["z_id"])
    s_ood = score.score(collapsed["h_ood"], collapsed["z_ood"])
    assert s_id.min() > s_ood.max()


# ------------------------------------------------------------------------------ pytorch-ood cross-check


def _pood_scores(name: str, data: dict[str, np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-ood 0.4.0 outlier scores (higher = OOD) for ID and OOD test rows."""
    from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis, MaxLogit, MaxSoftmax, ViM

    t = {k: torch.from_numpy(v) for k, v in data.items()}
    y = t["y"].long()
    if name in ("msp", "maxlogit", "energy"):
        fn = {"msp": MaxSoftmax.score, "maxlogit": MaxLogit.score, "energy": EnergyBased.score}[name]
        return fn(t["z_id"]).numpy(), fn(t["z_ood"]).numpy()
    if name == "mahalanobis":
        det = Mahalanobis(None).fit_features(t["h"].float(), y)
    elif name == "vim":
        det = ViM(None, d=dim, w=t["W"], b=t["b"]).fit_features(t["h"].float(), y)
    else:
        det = KNN(None, k=10).fit_features(t["h"], y)
    return (det.predict_features(t["h_id"].float() if name != "knn" else t["h_id"]).numpy(),
            det.predict_features(t["h_ood"].float() if name != "knn" else t["h_ood"]).numpy())


@pytest.mark.parametrize("name, options, ratio, rtol", [
    ("msp", {}, -1.0, 1e-12),
    ("maxlogit", {}, -1.0, 1e-12),
    ("energy", {}, -1.0, 1e-12),
    ("mahalanobis", {}, None, 1e-3),
    ("vim", {"dim": 6}, -1.0, 1e-3),
    ("knn", {"k": 10}, -1.0, 1e-6),
])
def test_matches_pytorch_ood(name: str, options: dict, ratio: float | None, rtol: float,
                             gauss: dict[str, np.ndarray]) -> None:
    score = _fit(ood.make_score(name, **options), gauss)
    theirs_id, theirs_ood = _pood_scores(name, gauss, options.get("dim", 0))
    labels_ood = np.r_[np.zeros(theirs_id.size), np.ones(theirs_ood.size)]
    auroc_theirs = roc_auc_score(labels_ood, np.r_[theirs_id, theirs_ood])     # their sign: OOD higher
    auroc_ours = _auroc_ours(score, gauss)
    assert 0.55 < auroc_ours < 0.999, "the case should not be trivially separable"
    assert abs(auroc_ours - auroc_theirs) < 1e-6
    ours = score.score(gauss["h_id"], gauss["z_id"])
    if ratio is None:  # pytorch-ood: half the distance under the unnormalised covariance N * Sigma_W
        ratio = -2.0 * gauss["h"].shape[0]
    np.testing.assert_allclose(ours, ratio * theirs_id, rtol=rtol, atol=1e-6)


# ------------------------------------------------------------------------------------ known answers


def test_logit_scores_by_formula(gauss: dict[str, np.ndarray]) -> None:
    z = gauss["z_id"]
    np.testing.assert_allclose(_fit(ood.Energy(temperature=2.5), gauss).score(gauss["h_id"], z),
                               2.5 * logsumexp(z / 2.5, axis=1), rtol=1e-12)
    p = np.sort(softmax(z, axis=1), axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(_fit(ood.GEN(gamma=0.5, M=3), gauss).score(gauss["h_id"], z),
                               -(p**0.5 * (1 - p) ** 0.5).sum(axis=1), rtol=1e-12)


def _naive_mahalanobis(h: np.ndarray, y: np.ndarray, h_test: np.ndarray) -> np.ndarray:
    means = np.stack([h[y == c].mean(axis=0) for c in range(K)])
    sigma = sum(np.outer(v, v) for v in h - means[y]) / h.shape[0]
    prec = np.linalg.pinv(sigma, hermitian=True)
    out = []
    for x in h_test:
        out.append(-min((x - m) @ prec @ (x - m) for m in means))
    return np.array(out)


def test_mahalanobis_equals_naive_loop(gauss: dict[str, np.ndarray]) -> None:
    ours = _fit(ood.Mahalanobis(), gauss).score(gauss["h_ood"], gauss["z_ood"])
    np.testing.assert_allclose(ours, _naive_mahalanobis(gauss["h"], gauss["y"], gauss["h_ood"]), rtol=1e-8)


def test_mahalanobis_singular_covariance(gauss: dict[str, np.ndarray]) -> None:
    data = dict(gauss, h=gauss["h"].copy(), h_ood=gauss["h_ood"].copy())
    data["h"][:, 3] = 0.0                                                # a dead feature dimension in training
    data["h_ood"][:, 3] = 1.0                                            # active at test time: ignored by Sigma_W^+
    ours = _fit(ood.Mahalanobis(), data).score(data["h_ood"], data["z_ood"])
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, _naive_mahalanobis(data["h"], data["y"], data["h_ood"]), rtol=1e-8)


def _symmetric_classes(K_: int = 4) -> dict[str, np.ndarray]:
    """K classes at 3 e_c in K dimensions, each with deviations +-e_j: exact means, Sigma_W = I / K."""
    devs = np.concatenate([np.eye(K_), -np.eye(K_)])                    # (2K, K)
    h = np.concatenate([3.0 * np.eye(K_)[c] + devs for c in range(K_)])  # (2K^2, K)
    y = np.repeat(np.arange(K_), 2 * K_)
    return dict(h=h, y=y, z=h.copy(), W=np.eye(K_), b=np.zeros(K_))


def test_mahalanobis_is_twice_the_log_likelihood_within_2_log_K() -> None:
    # S = -min_c d_c^2 and 2 L = 2 LSE_c(-d_c^2 / 2) (balanced Gaussian mixture, constants dropped):
    # S <= 2 L <= S + 2 log K, with equality on the right where all d_c are equal (here h = 0).
    data = _symmetric_classes()
    K_ = data["W"].shape[0]
    maha = _fit(ood.Mahalanobis(), data)
    np.testing.assert_allclose(maha.precision_, K_ * np.eye(K_), atol=1e-9)      # Sigma_W = I / K
    pts = np.concatenate([np.random.default_rng(6).normal(size=(200, K_)) * 3, np.zeros((1, K_))])
    d2 = K_ * ((pts[:, None, :] - 3.0 * np.eye(K_)[None]) ** 2).sum(-1)          # (N, K)
    S, two_L = maha.score(pts, pts), 2 * logsumexp(-d2 / 2, axis=1)
    np.testing.assert_allclose(S, -d2.min(axis=1), rtol=1e-9)
    gap = two_L - S
    assert (gap >= -1e-9).all() and (gap <= 2 * np.log(K_) + 1e-9).all()
    assert gap[-1] == pytest.approx(2 * np.log(K_), abs=1e-9)                    # > log K: the old bound fails


@pytest.mark.parametrize("per_class, rank", [(4, 10), (2, 5)])
def test_within_class_rank_is_n_minus_k(per_class: int, rank: int) -> None:
    # D = 10, K = 5: 4 images per class (fewer than D) still give full rank, since N - K = 15 >= D;
    # 2 per class give rank N - K = 5. The rank is min(N - K, D), not limited by the images per class.
    rng = np.random.default_rng(7)
    K_, D_ = 5, 10
    y = np.repeat(np.arange(K_), per_class)
    h = rng.normal(size=(y.size, D_)) + 3 * rng.normal(size=(K_, D_))[y]
    maha = ood.Mahalanobis().fit(h, h[:, :K_], y, np.eye(K_, D_), np.zeros(K_))
    assert maha.whitener_.shape[1] == rank == min(y.size - K_, D_)


def test_vim_default_dim_rule() -> None:
    assert [ood.vim_default_dim(n) for n in (4096, 2048, 1024, 768, 512, 16)] == [1000, 1000, 512, 512, 256, 8]


@pytest.mark.parametrize("D_, K_, d", [(4096, 1000, 1000), (2048, 10, 1000), (768, 1000, 512), (512, 100, 256),
                                     (128, 10, 64), (64, 100, 32), (16, 12, 12), (512, 300, 300), (16, None, 8)])
def test_vim_default_dim_with_classes(D_: int, K_: int | None, d: int) -> None:
    assert ood.vim_default_dim(D_, K_) == d


def _collapsed_uncentred(K_: int = 12, D_: int = 16, seed: int = 5) -> dict[str, np.ndarray]:
    """Features within 1e-3 of K generic class means in D > K dimensions, W = class means, b = 0 (u = 0)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(K_, D_)) + 2.0                                 # (K, D), affinely generic
    y = np.arange(40 * K_) % K_
    h = mu[y] + 1e-3 * rng.normal(size=(y.size, D_))
    return dict(h=h, y=y, z=h @ mu.T, W=mu, b=np.zeros(K_))


def test_vim_default_dim_keeps_class_means_out_of_the_residual() -> None:
    # About u the second moment of collapsed features has rank K (K - 1 simplex directions plus the mean's):
    # with d = K the residual is only the noise; with d = K - 1 or the old D // 2 it holds a class-mean direction.
    data = _collapsed_uncentred()
    K_, D_ = data["W"].shape
    assert ood.vim_default_dim(D_, K_) == K_ > D_ // 2
    default = _fit(_f64(ood.ViM()), data)
    assert default.dim_ == K_
    res = {d: _fit(_f64(ood.ViM(dim=d)), data).residual(data["h"]).mean() for d in (K_ - 1, D_ // 2)}
    noise = default.residual(data["h"]).mean()
    assert noise < 5e-3                                                  # sqrt(D - K) * 1e-3 = 2e-3
    assert min(res.values()) > 100 * noise


def test_vim_by_formula(gauss: dict[str, np.ndarray]) -> None:
    vim = _fit(_f64(ood.ViM(dim=6)), gauss)
    u = -np.linalg.pinv(gauss["W"]) @ gauss["b"]
    x = gauss["h"] - u
    _, vecs = np.linalg.eigh(x.T @ x / x.shape[0])
    P = vecs[:, ::-1][:, :6]                                             # top-6 principal directions

    def residual(h: np.ndarray) -> np.ndarray:
        return np.linalg.norm((h - u) - (h - u) @ P @ P.T, axis=1)

    alpha = gauss["z"].max(axis=1).mean() / residual(gauss["h"]).mean()
    assert vim.alpha_ == pytest.approx(alpha, rel=1e-9)
    np.testing.assert_allclose(vim.residual(gauss["h_ood"]), residual(gauss["h_ood"]), rtol=1e-9)
    expected = logsumexp(gauss["z_ood"], axis=1) - alpha * residual(gauss["h_ood"])
    np.testing.assert_allclose(vim.score(gauss["h_ood"], gauss["z_ood"]), expected, rtol=1e-9)


def _neco_problem() -> dict[str, np.ndarray]:
    """Zero-mean training set with variances 5, 3, 2 along e_0, e_1, e_2 and none elsewhere."""
    rows = [s * np.sqrt(v) * np.eye(D)[j] for j, v in enumerate((5.0, 3.0, 2.0)) for s in (1, -1)]
    h = np.array(rows * 5)                                               # (30, D), mean exactly 0
    W = np.random.default_rng(3).normal(size=(2, D))
    return dict(h=h, y=np.arange(h.shape[0]) % 2, z=h @ W.T, W=W, b=np.zeros(2))


def test_neco_known_ratios() -> None:
    data = _neco_problem()
    neco = _fit(_f64(ood.NECO(dim=3, standardize=False)), data)
    inside, orthogonal, mixed = np.zeros(D), np.zeros(D), np.zeros(D)
    inside[:3] = [1.0, -2.0, 0.5]
    orthogonal[7] = 1.0
    mixed[1], mixed[9] = 3.0, 4.0                                        # ||P h|| = 3, ||h|| = 5
    h = np.stack([inside, orthogonal, mixed])
    z = h @ data["W"].T
    np.testing.assert_allclose(neco.score(h, z), [1.0, 0.0, 0.6], atol=1e-12)
    with_logit = _fit(_f64(ood.NECOMaxLogit(dim=3, standardize=False)), data).score(h, z)
    np.testing.assert_allclose(with_logit, np.array([1.0, 0.0, 0.6]) * z.max(axis=1), atol=1e-12)


def test_neco_explained_variance_choice() -> None:
    data = _neco_problem()
    for target, d in ((0.4, 1), (0.75, 2), (0.85, 3), (1.0, 3)):
        neco = _fit(_f64(ood.NECO(explained_variance=target, standardize=False)), data)
        assert neco.dim_ == d
    np.testing.assert_allclose(neco.explained_variance_ratio_[:3], [0.5, 0.8, 1.0], rtol=1e-12)
    assert neco.explained_variance_ratio_.shape == (D,)


def test_neco_standardize_matches_zscore(gauss: dict[str, np.ndarray]) -> None:
    neco = _fit(_f64(ood.NECO(dim=5, standardize=True, maxlogit=False)), gauss)
    x = (gauss["h"] - gauss["h"].mean(0)) / gauss["h"].std(0)
    _, vecs = np.linalg.eigh(x.T @ x / x.shape[0])
    P = vecs[:, ::-1][:, :5]
    xt = (gauss["h_id"] - gauss["h"].mean(0)) / gauss["h"].std(0)
    expected = np.linalg.norm(xt @ P, axis=1) / np.linalg.norm(xt, axis=1)
    np.testing.assert_allclose(neco.score(gauss["h_id"], gauss["z_id"]), expected, rtol=1e-9)


def test_neco_variants_and_registry() -> None:
    # "neco" is the paper's ResNet-18 variant (standardised, no max logit); the max-logit one comes after the ten
    assert list(ood.SCORES)[:10] == ["msp", "maxlogit", "energy", "mahalanobis", "vim", "neco", "knn", "react",
                                     "ash", "gen"]
    assert list(ood.SCORES)[10:] == ["neco_maxlogit"]
    assert ood.make_score("neco").get_params() == dict(dim=None, explained_variance=0.9, standardize=True,
                                                       maxlogit=False)
    assert ood.make_score("neco_maxlogit").get_params()["maxlogit"] is True


@pytest.mark.parametrize("name", ["neco", "neco_maxlogit"])
def test_neco_matches_authors_procedure(name: str, gauss: dict[str, np.ndarray]) -> None:
    """StandardScaler, full sklearn PCA, ||first d PCA coordinates|| / ||z-scored h|| (times the max logit)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(gauss["h"])
    pca = PCA(D).fit(scaler.transform(gauss["h"]))
    x = scaler.transform(gauss["h_ood"])
    expected = np.linalg.norm(pca.transform(x)[:, :5], axis=1) / np.linalg.norm(x, axis=1)
    if name == "neco_maxlogit":
        expected = expected * gauss["z_ood"].max(axis=1)
    ours = _fit(_f64(ood.make_score(name, dim=5)), gauss).score(gauss["h_ood"], gauss["z_ood"])
    np.testing.assert_allclose(ours, expected, rtol=1e-8)


@pytest.mark.parametrize("name, options", [("vim", {"dim": 6}), ("neco", {}), ("neco_maxlogit", {}),
                                           ("knn", {"k": 10})])
def test_float32_products_keep_auroc(name: str, options: dict, gauss: dict[str, np.ndarray]) -> None:
    fast = _fit(ood.make_score(name, **options), gauss)
    exact = _fit(_f64(ood.make_score(name, **options)), gauss)
    assert fast.compute_dtype == torch.float32
    assert abs(_auroc_ours(fast, gauss) - _auroc_ours(exact, gauss)) < 1e-6
    np.testing.assert_allclose(fast.score(gauss["h_ood"], gauss["z_ood"]),
                               exact.score(gauss["h_ood"], gauss["z_ood"]), rtol=1e-4, atol=1e-5)


def test_float32_vim_keeps_the_small_subspace_far_from_the_origin() -> None:
    """Features whose mean is far from ViM's origin (||m||^2 ~ 1e4) with a tail of eigenvalues ~1e-3 apart:
    an uncentred float32 second moment rounds at ~1e-3 and rotates the residual space; centring first keeps
    the float32 scores equal to float64 ones."""
    g = torch.Generator().manual_seed(0)
    D, N, K = 32, 400, 5
    spread = torch.logspace(0, -3.5, D, dtype=torch.float64)             # eigenvalues 1 ... 3e-4
    h = 100.0 + torch.randn(N, D, generator=g, dtype=torch.float64) * spread.sqrt()
    W, b = torch.randn(K, D, generator=g, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    z = h @ W.T
    q = 100.0 + torch.randn(200, D, generator=g, dtype=torch.float64) * spread.sqrt() * 2
    fast = ood.ViM(dim=16).fit(h, z, torch.arange(N) % K, W, b)
    exact = _f64(ood.ViM(dim=16)).fit(h, z, torch.arange(N) % K, W, b)
    np.testing.assert_allclose(fast.residual(q), exact.residual(q), rtol=1e-4)


def test_knn_kth_neighbour() -> None:
    angles = np.array([0.0, 0.1, 0.3, 0.6])                              # training points on the unit circle
    h = np.c_[np.cos(angles), np.sin(angles)] * np.array([[1.0], [2.0], [0.5], [3.0]])  # norms do not matter
    W, b = np.eye(2), np.zeros(2)
    knn = _f64(ood.KNN(k=2)).fit(h, h, np.array([0, 1, 0, 1]), W, b)
    q = np.array([[1.0, 0.0]])                                           # 2nd nearest is angle 0.1
    assert knn.score(q, q)[0] == pytest.approx(-2 * np.sin(0.05), rel=1e-9)


def _near_ties(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit queries and a bank whose similarities to each query crowd near the k-th: every bank row is a
    query direction mixed with a little noise, so thousands of rows lie within bfloat16 rounding of it."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(8, d, generator=g), dim=1)
    bank = q[torch.arange(n) % 8] + 0.02 * torch.randn(n, d, generator=g)
    return q, F.normalize(bank, dim=1)


@pytest.mark.parametrize("n", [5_000, 5_011])                            # a multiple of the block and not
def test_bf16_prefilter_gives_the_exact_kth_similarity(n: int) -> None:
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(n, 64, generator=g), dim=1)
    q = F.normalize(torch.randn(300, 64, generator=g), dim=1)
    for k in (1, 7, 50):
        exact = ood.kth_similarity(q, bank, k, prefilter=False)
        sorted_sims = torch.sort(q @ bank.T, dim=1, descending=True).values
        np.testing.assert_allclose(exact, sorted_sims[:, k - 1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(ood.kth_similarity(q, bank, k, prefilter=True), exact, rtol=0, atol=1e-6)


def test_bf16_prefilter_is_exact_when_similarities_crowd_the_kth() -> None:
    q, bank = _near_ties(4_000, 32, seed=1)                              # bf16 spacing ~ 0.004 near 1
    exact = ood.kth_similarity(q, bank, 50, prefilter=False)
    np.testing.assert_allclose(ood.kth_similarity(q, bank, 50, prefilter=True), exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("crowded", [False, True])
def test_bf16_bound_holds_and_its_threshold_keeps_every_row_that_reaches_the_kth(crowded: bool) -> None:
    if crowded:
        q, bank = _near_ties(2_000, 32, seed=2)
    else:
        g = torch.Generator().manual_seed(3)
        q, bank = (F.normalize(torch.randn(n, 32, generator=g), dim=1) for n in (40, 2_000))
    q16, bank16 = q.to(torch.bfloat16), bank.to(torch.bfloat16)
    bound = ood._Bf16Bound(bank, bank16)
    s, s16 = q.double() @ bank.double().T, (q16 @ bank16.T).double()   # exact, and what the prefilter sees
    slack = bound.slack(q, q16).double()[:, None]
    assert ((s - s16).abs() <= slack + bound.c * s16.abs()).all()
    assert slack.max() < 0.02                                           # and the bound is not vacuous
    k = 50
    kth, kth16 = s.topk(k, dim=1).values[:, -1:], s16.topk(k, dim=1).values[:, -1]
    threshold = bound.threshold(q, q16, kth16.float()).double()[:, None]
    assert (s16[s >= kth] >= threshold.expand_as(s)[s >= kth]).all()


def test_knn_scores_agree_with_and_without_the_prefilter(gauss: dict[str, np.ndarray]) -> None:
    h_id = gauss["h_id"]
    with_bf16, without = _fit(ood.KNN(k=5), gauss), _fit(ood.KNN(k=5), gauss)
    with_bf16.prefilter, without.prefilter = True, False
    np.testing.assert_allclose(with_bf16.score(h_id, gauss["z_id"]), without.score(h_id, gauss["z_id"]), atol=1e-6)


def test_react_and_ash_by_formula() -> None:
    h = np.array([[4.0, 3.0, 2.0, 1.0], [0.5, 0.0, 2.5, 1.0]])
    W = np.arange(12.0).reshape(3, 4) / 10
    b = np.array([0.1, -0.2, 0.3])
    y, z = np.array([0, 1]), h @ W.T + b
    react = ood.ReAct(percentile=50, temperature=2.0).fit(h, z, y, W, b)
    c = np.percentile(h, 50)
    assert react.threshold_ == pytest.approx(c)
    np.testing.assert_allclose(react.score(h, z), 2.0 * logsumexp((np.minimum(h, c) @ W.T + b) / 2.0, axis=1))
    ash = ood.ASH(percentile=50).fit(h, z, y, W, b)                      # keep 2 of 4 activations
    shaped = np.array([[4.0, 3.0, 0, 0], [0, 0, 2.5, 1.0]]) * np.exp([[10 / 7], [4 / 3.5]])
    np.testing.assert_allclose(ash.score(h, z), logsumexp(shaped @ W.T + b, axis=1), rtol=1e-12)


# ------------------------------------------------------------------------------------------ errors


def test_rejects_non_finite(gauss: dict[str, np.ndarray]) -> None:
    bad = gauss["h"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        ood.Energy().fit(bad, gauss["z"], gauss["y"], gauss["W"], gauss["b"])
    score = _fit(ood.KNN(k=5), gauss)
    bad_test = gauss["h_id"].copy()
    bad_test[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        score.score(bad_test, gauss["z_id"])


def test_rejects_mismatched_dimensions(gauss: dict[str, np.ndarray]) -> None:
    score = _fit(ood.Mahalanobis(), gauss)
    with pytest.raises(ValueError, match="feature dimensions"):
        score.score(gauss["h_id"][:, :-1], gauss["z_id"])
    with pytest.raises(ValueError, match="classes"):
        score.score(gauss["h_id"], gauss["z_id"][:, :-1])
    with pytest.raises(ValueError, match="rows"):
        score.score(gauss["h_id"][:5], gauss["z_id"][:6])
    with pytest.raises(ValueError, match="feature dimensions"):
        ood.MSP().fit(gauss["h"], gauss["z"], gauss["y"], gauss["W"][:, :-1], gauss["b"])
    with pytest.raises(ValueError, match="fc_bias"):
        ood.MSP().fit(gauss["h"], gauss["z"], gauss["y"], gauss["W"], gauss["b"][:-1])
    with pytest.raises(ValueError, match="train_labels"):
        ood.MSP().fit(gauss["h"], gauss["z"], gauss["y"] + K, gauss["W"], gauss["b"])


@pytest.mark.parametrize("build", [
    lambda: ood.Energy(temperature=0.0),
    lambda: ood.Energy(temperature=-1.0),
    lambda: ood.ReAct(temperature=0.0),
    lambda: ood.ReAct(percentile=101),
    lambda: ood.ASH(percentile=100),
    lambda: ood.GEN(gamma=0.0),
    lambda: ood.KNN(k=0),
    lambda: ood.NECO(dim=0),
    lambda: ood.NECO(explained_variance=1.5),
    lambda: ood.ViM(dim=2.5),
])
def test_rejects_bad_hyperparameters(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_rejects_options_too_large_for_data(gauss: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="exceeds the training size"):
        _fit(ood.KNN(k=gauss["h"].shape[0] + 1), gauss)
    with pytest.raises(ValueError, match="feature size"):
        _fit(ood.NECO(dim=D + 1), gauss)
    with pytest.raises(ValueError, match="dim must be below the feature size"):
        _fit(ood.ViM(dim=D), gauss)
    with pytest.raises(ValueError, match="number of classes"):
        _fit(ood.GEN(M=K + 1), gauss)


def test_make_score_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown score"):
        ood.make_score("odin")
    with pytest.raises(ValueError, match="unknown options"):
        ood.make_score("energy", temp=2.0)
    with pytest.raises(ValueError, match="unknown options"):
        ood.make_score("msp", temperature=2.0)
    assert ood.make_score("knn", k=3).get_params() == {"k": 3}
