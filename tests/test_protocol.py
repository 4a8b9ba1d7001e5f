"""Tests for helpers.protocol: structure, known answers on synthetic features, the ID-vs-ID check, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from helpers import metrics, ood, protocol
from helpers.features import Features

K, D = 4, 16


def _draw(rng: np.random.Generator, mu: np.ndarray, W: np.ndarray, b: np.ndarray, n: int, shift: float = 0.0,
          noise: float = 0.5) -> Features:
    """Non-negative features around class means mu (K, D), plus ``shift`` on every coordinate; logits W h + b."""
    y = np.arange(n) % K
    h = np.abs(mu[y] + shift + noise * rng.normal(size=(n, D)))            # (n, D)
    return Features(torch.tensor(h @ W.T + b), torch.tensor(h), torch.tensor(y))


@pytest.fixture(scope="module")
def problem() -> dict:
    """ID classes at 3 e_c (plus noise), W = e_c; "same" is a fresh ID draw, "far" lies 20 units away."""
    rng = np.random.default_rng(0)
    mu = 3.0 * np.eye(K, D)                                                # (K, D)
    W, b = np.eye(K, D) + 0.05 * rng.normal(size=(K, D)), 0.1 * rng.normal(size=K)
    return dict(W=torch.tensor(W), b=torch.tensor(b), train=_draw(rng, mu, W, b, 400),
                test=_draw(rng, mu, W, b, 300), same=_draw(rng, mu, W, b, 300),
                far=_draw(rng, mu, W, b, 200, shift=20.0))


ALL = {name: {} for name in ood.SCORES}


def test_output_structure(problem):
    sets = {"same": problem["same"], "far": problem["far"]}
    res = protocol.evaluate_scores(problem["train"], problem["W"], problem["b"], problem["test"], sets, ALL,
                                     n_boot=10, seed=0)
    assert list(res) == list(ood.SCORES)
    for per_set in res.values():
        assert list(per_set) == ["same", "far"]
        for m in per_set.values():
            assert {"auroc", "auroc_low", "auroc_high", "fpr95"} <= set(m)
            assert 0 <= m["auroc"] <= 1 and 0 <= m["fpr95"] <= 1
            assert m["auroc_low"] <= m["auroc_high"]


def test_far_ood_is_detected_by_mahalanobis(problem):
    res = protocol.evaluate_scores(problem["train"], problem["W"], problem["b"], problem["test"],
                                     {"far": problem["far"]}, {"mahalanobis": {}, "knn": {"k": 10}}, n_boot=10)
    for name in ("mahalanobis", "knn"):
        assert res[name]["far"]["auroc"] > 0.99, name
    assert res["mahalanobis"]["far"]["fpr95"] < 0.05


def test_exchangeable_ood_gives_chance(problem):
    res = protocol.evaluate_scores(problem["train"], problem["W"], problem["b"], problem["test"],
                                     {"same": problem["same"]}, ALL, n_boot=0)
    tol = 4 * protocol.auroc_null_sd(300, 300)
    for name, per_set in res.items():
        assert abs(per_set["same"]["auroc"] - 0.5) < tol, name


def test_compute_scores_matches_a_direct_fit(problem):
    raw, fitted = protocol.compute_scores(problem["train"], problem["W"], problem["b"], {"t": problem["test"]},
                                            {"energy": {"temperature": 2.0}})
    z = problem["test"].logits.numpy()
    np.testing.assert_allclose(raw["energy"]["t"], 2.0 * np.log(np.exp(z / 2.0).sum(1)), rtol=1e-10)
    assert fitted["energy"].temperature == 2.0


def test_summarise_needs_the_id_set(problem):
    raw = {"msp": {"a": np.zeros(3), "b": np.ones(3)}}
    with pytest.raises(ValueError, match="ID set"):
        protocol.summarise(raw, "id")
    out = protocol.summarise(raw, "a", n_boot=0)
    assert list(out["msp"]) == ["b"] and out["msp"]["b"]["auroc"] == 0.0


def test_split_halves_partition_and_seed():
    a, b = protocol.split_halves(11, seed=3)
    assert len(a) == 5 and len(b) == 6
    assert sorted(torch.cat([a, b]).tolist()) == list(range(11))
    a2, _ = protocol.split_halves(11, seed=3)
    assert torch.equal(a, a2)
    assert not torch.equal(a, protocol.split_halves(11, seed=4)[0])
    with pytest.raises(ValueError, match="at least 2"):
        protocol.split_halves(1)


def test_auroc_null_sd_known_values():
    assert protocol.auroc_null_sd(1, 1) == pytest.approx(0.5)          # AUROC is 0 or 1 with prob. 1/2
    s = np.random.default_rng(0).normal(size=(4000, 50))                # Monte Carlo: 20 "ID" vs 30 "OOD"
    aucs = (rankdata(s, axis=1)[:, :20].sum(1) - 20 * 21 / 2) / (20 * 30)   # Mann-Whitney AUROC per row
    assert np.std(aucs) == pytest.approx(protocol.auroc_null_sd(20, 30), rel=0.1)


def test_id_vs_id_is_chance_even_for_sorted_scores():
    n = 2000
    scores = {"ordered": np.arange(n, dtype=float), "noise": np.random.default_rng(1).normal(size=n)}
    out = protocol.id_vs_id(scores, n_boot=20, seed=0)
    assert out["n_a"] + out["n_b"] == n and out["n_a"] == n // 2
    assert out["null_sd"] == pytest.approx(protocol.auroc_null_sd(n // 2, n - n // 2))
    for name, m in out["scores"].items():
        assert abs(m["auroc"] - 0.5) < 4 * out["null_sd"], name      # a first/second-half split would give 0
        assert abs(m["fpr95"] - 0.95) < 0.05, name


def test_id_vs_id_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one length"):
        protocol.id_vs_id({"a": np.zeros(10), "b": np.zeros(11)})


def test_neco_all_dims_matches_the_class(problem):
    tr, te = problem["train"], problem["test"]
    full = protocol.fit_score("neco", {"dim": D}, tr, problem["W"], problem["b"])
    dims = [1, 3, 7, D]
    many = protocol.neco_all_dims(full, te.features, te.logits, dims)
    assert many.shape == (len(te), len(dims))
    for j, d in enumerate(dims):
        one = protocol.fit_score("neco", {"dim": d}, tr, problem["W"], problem["b"]).score(te.features, te.logits)
        np.testing.assert_allclose(many[:, j], one, rtol=1e-9, atol=1e-12)
    partial = protocol.fit_score("neco", {"dim": 3}, tr, problem["W"], problem["b"])
    with pytest.raises(ValueError, match="dim equal"):
        protocol.neco_all_dims(partial, te.features, te.logits, dims)


def test_neco_sweep_structure(problem):
    sw = protocol.neco_sweep(problem["train"], problem["W"], problem["b"], problem["test"],
                               {"far": problem["far"], "same": problem["same"]})
    assert sw["dims"] == protocol.sweep_dims(D) and sw["dims"][0] == 1 and sw["dims"][-1] == D
    ev = np.array(sw["explained_variance"])
    assert np.all(np.diff(ev) >= -1e-12) and ev[-1] == pytest.approx(1.0)
    rule = ood.NECO().fit(problem["train"].features, problem["train"].logits, problem["train"].labels,
                          problem["W"], problem["b"])
    assert sw["chosen_dim"] == rule.dim_
    assert set(sw["auroc"]) == {"far", "same"} and all(len(v) == len(sw["dims"]) for v in sw["auroc"].values())


def test_select_option_prefers_k_that_ignores_a_few_training_outliers():
    """Three training outliers sit where the validation OOD lies: k = 1 finds them, k = 10 does not."""
    rng = np.random.default_rng(2)
    mu = 3.0 * np.eye(K, D)
    W, b = np.eye(K, D), np.zeros(K)
    train = _draw(rng, mu, W, b, 400)
    odd = np.zeros((3, D))
    odd[:, -1] = 5.0                                                        # 3 training points along e_{D-1}
    h = torch.cat([train.features, torch.tensor(odd + 0.01 * rng.normal(size=(3, D)))])
    train = Features(h @ torch.tensor(W).T, h, torch.cat([train.labels, torch.zeros(3, dtype=torch.long)]))
    id_val = _draw(rng, mu, W, b, 100)
    h_ood = torch.tensor(np.abs(odd[[0] * 50] + 0.3 * rng.normal(size=(50, D))))
    ood_val = Features(h_ood @ torch.tensor(W).T, h_ood, -torch.ones(50, dtype=torch.long))
    chosen, aurocs = protocol.select_option("knn", "k", [1, 10], train, W, b, id_val, ood_val)
    assert chosen == 10 and aurocs[1] > aurocs[0] and len(aurocs) == 2


def test_fitted_params_and_average(problem):
    _, fitted = protocol.compute_scores(problem["train"], problem["W"], problem["b"], {"t": problem["test"]},
                                          {"vim": {}, "gen": {}})
    params = protocol.fitted_params(fitted)
    assert params["vim"]["dim"] == ood.vim_default_dim(D, K) and params["gen"]["M"] == K
    res = {"s": {"a": {"auroc": 0.6, "fpr95": 0.2}, "b": {"auroc": 0.8, "fpr95": 0.4}}}
    assert protocol.average(res)["s"] == pytest.approx({"auroc": 0.7, "fpr95": 0.3})


def test_interval_table_formats_percent():
    res = {"s": {"a": {"auroc": 0.71234, "auroc_low": 0.68, "auroc_high": 0.7412}}}
    table = protocol.interval_table(res)
    assert table.loc["s", "a"] == "71.2 [68.0, 74.1]"


def test_errors(problem):
    with pytest.raises(ValueError, match="empty"):
        protocol.evaluate_scores(problem["train"], problem["W"], problem["b"], problem["test"], {}, ALL)
    with pytest.raises(ValueError, match="unknown score"):
        protocol.compute_scores(problem["train"], problem["W"], problem["b"], {"t": problem["test"]}, {"nope": {}})
    with pytest.raises(ValueError, match="values is empty"):
        protocol.select_option("knn", "k", [], problem["train"], problem["W"], problem["b"], problem["test"],
                                 problem["far"])


def test_default_options_follow_the_registry_and_the_rules():
    opts = protocol.default_options(D)
    assert list(opts) == list(ood.SCORES)
    assert opts["vim"] == {} and opts["neco"] == {"explained_variance": 0.9}       # ViM resolves d itself
    assert opts["msp"] == {} and opts["react"] == {"percentile": 90}


def test_detect_is_select_then_fit_then_summarise(problem):
    """``detect`` = KNN's k chosen on (val, validation OOD), every score fitted on train, ID test vs each set."""
    feats = {"train": problem["train"], "val": problem["same"], "test": problem["test"], "far": problem["far"],
             "val-ood": problem["far"]}
    det = protocol.detect(feats, problem["W"], problem["b"], ["far"], "val-ood", n_boot=10, seed=3)
    k, aurocs = protocol.select_option("knn", "k", [1, 5, 10, 20, 50, 100, 200], problem["train"], problem["W"],
                                       problem["b"], problem["same"], problem["far"])
    assert det.selection == dict(score="knn", param="k", values=[1, 5, 10, 20, 50, 100, 200], val_auroc=aurocs,
                                 chosen=k, id_set="val", ood_set="val-ood")
    options = {**protocol.default_options(D), "knn": {"k": k}}
    assert det.options == options
    expected = protocol.evaluate_scores(problem["train"], problem["W"], problem["b"], problem["test"],
                                        {"far": problem["far"]}, options, n_boot=10, seed=3)
    assert det.results == expected and list(det.results) == list(ood.SCORES)
    assert list(det.raw["msp"]) == [protocol.ID_TEST, "far"]
    assert det.used["knn"]["k"] == k and det.used["vim"]["dim"] == ood.vim_default_dim(D, K)


def test_by_set_transposes():
    res = {"a": {"x": {"auroc": 1.0}, "y": {"auroc": 2.0}}, "b": {"x": {"auroc": 3.0}}}
    assert protocol.by_set(res) == {"x": {"a": {"auroc": 1.0}, "b": {"auroc": 3.0}}, "y": {"a": {"auroc": 2.0}}}
    assert protocol.interval({"fpr95": 0.5, "fpr95_low": 0.25, "fpr95_high": 0.75}, "fpr95") == "50.0 [25.0, 75.0]"


def test_ood_groups_follow_openood_for_cifar_and_are_empty_for_other_id_sets():
    sets = ["cifar10", "tinyimagenet", "dtd10", "fashion-mnist"]
    assert protocol.ood_groups("cifar100", sets) == {"near": ("cifar10", "tinyimagenet"),
                                                     "far": ("dtd10", "fashion-mnist")}
    assert protocol.ood_groups("cifar10", ["cifar100", "svhn"]) == {"near": ("cifar100",), "far": ("svhn",)}
    assert protocol.ood_groups("imagefolder:/x", sets) == {}


def test_group_means_average_only_their_sets():
    res = {"msp": {"a": {"auroc": 0.9, "fpr95": 0.1}, "b": {"auroc": 0.7, "fpr95": 0.5},
                   "c": {"auroc": 0.2, "fpr95": 0.9}}}
    g = protocol.group_means(res, {"near": ("a", "b"), "far": ("c",), "none": ()}, keys=("auroc", "fpr95"))
    assert set(g) == {"near", "far"} and g["near"]["sets"] == ["a", "b"]
    assert g["near"]["mean"]["msp"] == pytest.approx({"auroc": 0.8, "fpr95": 0.3})
    assert g["far"]["mean"]["msp"] == pytest.approx({"auroc": 0.2, "fpr95": 0.9})


def test_group_means_get_the_bootstrap_interval_of_the_mean_over_their_sets():
    rng = np.random.default_rng(0)
    id_scores, near_a, near_b = rng.normal(1, 1, 400), rng.normal(0, 1, 300), rng.normal(0.5, 1, 200)
    raw = {"msp": {protocol.ID_TEST: id_scores, "a": near_a, "twin": near_a.copy(), "b": near_b}}
    res, reps = protocol.summarise_with_replicates(raw, protocol.ID_TEST, n_boot=200, seed=3)
    assert res == protocol.summarise(raw, protocol.ID_TEST, n_boot=200, seed=3)                # same summaries
    assert res["msp"]["b"] == metrics.summary(id_scores, near_b, n_boot=200, seed=3)
    g = protocol.group_means(res, {"one": ("b",), "twins": ("a", "twin"), "near": ("a", "b")}, keys=("auroc",),
                             replicates=reps)
    for group, same_as in (("one", "b"), ("twins", "a")):      # one set, or a set twice: that set's interval
        m = g[group]["mean"]["msp"]
        assert (m["auroc_low"], m["auroc_high"]) == pytest.approx((res["msp"][same_as]["auroc_low"],
                                                                   res["msp"][same_as]["auroc_high"]))
    m = g["near"]["mean"]["msp"]
    both = (metrics.bootstrap_replicates(id_scores, near_a, 200, 3)["auroc"]
            + metrics.bootstrap_replicates(id_scores, near_b, 200, 3)["auroc"]) / 2
    assert (m["auroc_low"], m["auroc_high"]) == pytest.approx(metrics.percentile_interval(both))
    assert m["auroc_low"] < m["auroc"] < m["auroc_high"]
    (id_a, _), (id_b, _) = (next(metrics.resample_indices(400, n, 200, 3)) for n in (300, 200))
    rows = min(len(id_a), len(id_b))
    assert np.array_equal(id_a[:rows], id_b[:rows])          # the sets' replicates resample the ID scores alike
    assert "auroc_low" not in protocol.group_means(res, {"near": ("a", "b")}, keys=("auroc",))["near"]["mean"]["msp"]
