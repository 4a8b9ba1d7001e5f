"""Tests for helpers.metrics on hand-made cases with known answers."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from helpers import metrics


@pytest.mark.parametrize("id_scores, ood_scores, expected", [
    # perfect separation: every ID score above every OOD score
    ([3.0, 4.0, 5.0], [0.0, 1.0, 2.0], dict(auroc=1.0, fpr95=0.0, fpr95_ood_positive=0.0, aupr_in=1.0, aupr_out=1.0)),
    # reversed: keeping all ID accepts all OOD, flagging all OOD flags all ID
    ([0.0, 1.0, 2.0], [3.0, 4.0, 5.0], dict(auroc=0.0, fpr95=1.0, fpr95_ood_positive=1.0)),
    # identical scores
    ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], dict(auroc=0.5, fpr95=1.0, fpr95_ood_positive=1.0)),
    # 3 vs 3 by hand: 7 of 9 pairs ordered; keeping all ID (t = 0.4) accepts 0.7 and 0.5;
    # flagging all OOD (s <= 0.7) flags ID 0.4. AP-in = (1 + 1 + 3/5) / 3, AP-out = (1 + 2/3 + 3/4) / 3.
    ([0.9, 0.8, 0.4], [0.7, 0.5, 0.3],
     dict(auroc=7 / 9, fpr95=2 / 3, fpr95_ood_positive=1 / 3, aupr_in=2.6 / 3, aupr_out=(1 + 2 / 3 + 3 / 4) / 3)),
    # ties count 1/2: pairs (1,1) x2 give 1/2 each, the rest are ordered: (2 * 2.5 + 3) / 9
    ([1.0, 1.0, 2.0], [1.0, 0.0, 0.0], dict(auroc=8 / 9, fpr95=1 / 3)),
])
def test_hand_counted_cases(id_scores: list, ood_scores: list, expected: dict) -> None:
    out = metrics.ood_metrics(np.array(id_scores), np.array(ood_scores))
    assert tuple(out) == metrics.METRICS
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key


def test_fpr95_conventions_differ_at_95_percent() -> None:
    # 20 ID scores 0.5..19.5: keeping 19 of 20 puts the threshold at 1.5; OOD >= 1.5 are 1.7 and 25.
    # Flagging >= 95 % of the 4 OOD means all 4, i.e. every score <= 25: all ID are flagged.
    id_scores = np.arange(20) + 0.5
    ood_scores = np.array([0.0, 1.0, 1.7, 25.0])
    out = metrics.ood_metrics(id_scores, ood_scores)
    assert out["fpr95"] == pytest.approx(0.5)
    assert out["fpr95_ood_positive"] == pytest.approx(1.0)
    # with 100 OOD samples 95 must be flagged: the 95 at -1 lie above only the two ID scores at -2
    ood_many = np.r_[np.full(95, -1.0), np.full(5, 30.0)]
    id_many = np.r_[np.full(2, -2.0), np.full(18, 10.0)]
    out = metrics.ood_metrics(id_many, ood_many)
    assert out["fpr95_ood_positive"] == pytest.approx(2 / 20)
    assert out["fpr95"] == pytest.approx(1.0)        # 95 % of ID needs t = -2, which accepts every OOD sample


def test_sign_handling() -> None:
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 150)
    out = metrics.ood_metrics(s_id, s_ood)
    assert 0.6 < out["auroc"] < 0.9
    swapped = metrics.ood_metrics(s_ood, s_id)
    assert swapped["auroc"] == pytest.approx(1 - out["auroc"])
    exchanged = metrics.ood_metrics(-s_ood, -s_id)                   # OOD treated as ID with the flipped score
    assert exchanged["aupr_in"] == pytest.approx(out["aupr_out"])
    assert exchanged["aupr_out"] == pytest.approx(out["aupr_in"])
    assert exchanged["fpr95"] == pytest.approx(out["fpr95_ood_positive"])
    negated = metrics.ood_metrics(-s_id, -s_ood)
    assert negated["auroc"] == pytest.approx(1 - out["auroc"])
    monotone = metrics.ood_metrics(np.exp(s_id) * 3, np.exp(s_ood) * 3)
    assert monotone == pytest.approx(out)
    assert metrics.ood_metrics(torch.from_numpy(s_id), torch.from_numpy(s_ood)) == pytest.approx(out)


def test_metric_names_are_constants() -> None:
    assert metrics.METRICS == (metrics.AUROC, metrics.FPR95, metrics.FPR95_OOD_POSITIVE, metrics.AUPR_IN,
                               metrics.AUPR_OUT) == ("auroc", "fpr95", "fpr95_ood_positive", "aupr_in", "aupr_out")
    assert (metrics.low_key(metrics.AUROC), metrics.high_key(metrics.FPR95)) == ("auroc_low", "fpr95_high")


def _vim_code_fpr(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """haoqiwang/vim benchmark.py: threshold = the floor(0.95 n)-th largest ID score."""
    return float(np.mean(s_ood >= np.sort(s_id)[-int(np.floor(0.95 * s_id.size))]))


def test_fpr95_order_statistics_by_hand() -> None:
    # n = 10 ID scores 1..10: ceil(9.5) = 10 kept, tau = the 10th largest = 1, OOD >= 1 are 1.5 and 3: 2/3.
    # The ViM/NECO code keeps floor(9.5) = 9, tau = 2, and counts only 3: 1/3.
    # OOD positive: ceil(0.95 * 3) = 3, tau' = the 3rd smallest OOD score = 3, ID <= 3 are 1, 2, 3: 3/10.
    s_id, s_ood = np.arange(1.0, 11.0), np.array([1.5, 0.5, 3.0])
    out = metrics.ood_metrics(s_id, s_ood)
    assert metrics.n_kept(10) == 10 and metrics.n_kept(20) == 19 and metrics.n_kept(3) == 3
    assert out["fpr95"] == pytest.approx(2 / 3) and _vim_code_fpr(s_id, s_ood) == pytest.approx(1 / 3)
    assert out["fpr95_ood_positive"] == pytest.approx(3 / 10)
    # n = 20: 0.95 n = 19 is an integer, both rules keep 19 ID scores (tau = 2) and agree: OOD >= 2 is 3 only
    s_id20 = np.arange(1.0, 21.0)
    assert metrics.ood_metrics(s_id20, s_ood)["fpr95"] == pytest.approx(1 / 3) == _vim_code_fpr(s_id20, s_ood)
    # ties at the threshold count as accepted (>=) and as flagged (<=)
    tied = metrics.ood_metrics(np.array([1.0, 1.0, 2.0]), np.array([1.0, 0.0]))
    assert tied["fpr95"] == pytest.approx(1 / 2) and tied["fpr95_ood_positive"] == pytest.approx(2 / 3)


def _loop_replicates(s_id: np.ndarray, s_ood: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """The straightforward bootstrap: one replicate at a time, ``ood_metrics`` (scikit-learn) on each."""
    rng_id, rng_ood = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    rows = [metrics.ood_metrics(s_id[rng_id.integers(0, s_id.size, s_id.size)],
                                s_ood[rng_ood.integers(0, s_ood.size, s_ood.size)]) for _ in range(n_boot)]
    return {k: np.array([r[k] for r in rows]) for k in metrics.METRICS}


@pytest.mark.parametrize("seed, ties, block", [(0, False, 2**22), (1, True, 2**22), (2, True, 500), (3, False, 90)])
def test_bootstrap_equals_loop(seed: int, ties: bool, block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", block)              # small blocks: several per call
    rng = np.random.default_rng(seed)
    s_id, s_ood = rng.normal(0.8, 1.0, 97), rng.normal(0.0, 1.3, 61)
    if ties:
        s_id, s_ood = np.round(s_id, 1), np.round(s_ood, 1)
    fast = metrics.bootstrap_replicates(s_id, s_ood, n_boot=40, seed=seed)
    loop = _loop_replicates(s_id, s_ood, 40, seed)
    for k in metrics.METRICS:
        np.testing.assert_allclose(fast[k], loop[k], rtol=0, atol=1e-12, err_msg=k)
    intervals = metrics.bootstrap(s_id, s_ood, n_boot=40, seed=seed, level=0.9)
    for k in metrics.METRICS:
        assert intervals[k] == pytest.approx(tuple(np.quantile(loop[k], [0.05, 0.95])), abs=1e-12)


@pytest.mark.parametrize("s_id, s_ood", [
    (np.full(7, 2.0), np.full(5, 2.0)),                              # all scores equal: one tie group
    (np.array([0.3]), np.array([0.1, 0.3, 0.9, 0.3])),               # n = 1
    (np.array([0.2, 0.5, 0.5, 1.0]), np.array([0.5])),               # m = 1
    (np.array([1.0]), np.array([1.0])),                              # n = m = 1, tied
])
def test_bootstrap_edge_cases_equal_loop(s_id: np.ndarray, s_ood: np.ndarray) -> None:
    fast = metrics.bootstrap_replicates(s_id, s_ood, n_boot=30, seed=5)
    loop = _loop_replicates(s_id, s_ood, 30, 5)
    for k in metrics.METRICS:
        np.testing.assert_allclose(fast[k], loop[k], rtol=0, atol=1e-12, err_msg=k)


def test_bootstrap_tie_heavy_integer_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    # integer scores in 0..5: every distinct value is shared by many ID and OOD points
    rng = np.random.default_rng(11)
    s_id, s_ood = rng.integers(1, 6, 300).astype(float), rng.integers(0, 4, 200).astype(float)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 3000)
    fast = metrics.bootstrap_replicates(s_id, s_ood, n_boot=25, seed=2)
    loop = _loop_replicates(s_id, s_ood, 25, 2)
    for k in metrics.METRICS:
        np.testing.assert_allclose(fast[k], loop[k], rtol=0, atol=1e-12, err_msg=k)
    assert np.ptp(fast["auroc"]) > 0                                 # the replicates really differ


def test_counts_of_the_sample_itself_give_sklearn() -> None:
    # one replicate that draws every point once is the sample: AUROC and AP as scikit-learn computes them
    from sklearn.metrics import average_precision_score, roc_auc_score
    rng = np.random.default_rng(12)
    s_id, s_ood = np.round(rng.normal(1, 1, 400), 1), np.round(rng.normal(0, 1, 300), 1)   # many ties
    p = metrics.SortedScores.of(s_id, s_ood)
    a = metrics._counts(p.g_id, np.arange(s_id.size)[None], p.n_v)
    c = metrics._counts(p.g_ood, np.arange(s_ood.size)[None], p.n_w)
    out = metrics.metrics_from_counts(a, c, p)
    y = np.r_[np.ones(s_id.size), np.zeros(s_ood.size)]
    s = np.r_[s_id, s_ood]
    assert out["auroc"][0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert out["aupr_in"][0] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert out["aupr_out"][0] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)


def test_bootstrap_does_not_depend_on_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    s_id, s_ood = rng.normal(1, 1, 500), rng.normal(0, 1, 400)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 2000)            # about 20 blocks
    runs = []
    for workers in (1, 2, 3):
        monkeypatch.setattr(metrics, "_WORKERS", workers)
        runs.append(metrics.bootstrap_replicates(s_id, s_ood, n_boot=45, seed=4))
    for k in metrics.METRICS:
        assert np.array_equal(runs[0][k], runs[1][k]) and np.array_equal(runs[0][k], runs[2][k]), k


def test_bootstrap_is_seeded_and_contains_estimate() -> None:
    assert inspect.signature(metrics.bootstrap).parameters["n_boot"].default >= 1000
    assert inspect.signature(metrics.summary).parameters["n_boot"].default >= 1000
    rng = np.random.default_rng(3)
    s_id, s_ood = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 250)
    a = metrics.bootstrap(s_id, s_ood, seed=7)
    assert a == metrics.bootstrap(s_id, s_ood, seed=7)
    assert a != metrics.bootstrap(s_id, s_ood, seed=8)
    point = metrics.ood_metrics(s_id, s_ood)
    assert set(a) == set(metrics.METRICS)
    for key in metrics.METRICS:
        low, high = a[key]
        assert low < point[key] < high
    wide = metrics.bootstrap(s_id, s_ood, n_boot=300, seed=7, level=0.99)["auroc"]
    narrow = metrics.bootstrap(s_id, s_ood, n_boot=300, seed=7, level=0.8)["auroc"]
    assert wide[0] <= narrow[0] and wide[1] >= narrow[1]


def test_summary_and_table() -> None:
    rng = np.random.default_rng(4)
    s_id, s_ood = rng.normal(1.0, 1.0, 100), rng.normal(0.0, 1.0, 80)
    summ = metrics.summary(s_id, s_ood, n_boot=50, seed=0)
    assert list(summ) == [k for name in metrics.METRICS for k in (name, f"{name}_low", f"{name}_high")]
    assert summ["auroc"] == pytest.approx(metrics.ood_metrics(s_id, s_ood)["auroc"])
    assert np.isnan(metrics.summary(s_id, s_ood, n_boot=0)["aupr_out_low"])

    results = {"energy": {"svhn": {"auroc": 0.9, "fpr95": 0.3}, "dtd": {"auroc": 0.801234, "fpr95": 0.5}},
               "neco": {"svhn": {"auroc": 0.95, "fpr95": 0.2}, "dtd": {"auroc": 0.85, "fpr95": 0.25}}}
    df = metrics.table(results)
    assert list(df.index) == ["energy", "neco"]
    assert list(df.columns) == [("AUROC", "svhn"), ("AUROC", "dtd"), ("AUROC", "average"),
                                ("FPR95", "svhn"), ("FPR95", "dtd"), ("FPR95", "average")]
    assert df.loc["energy", ("AUROC", "dtd")] == pytest.approx(80.12)
    assert df.loc["energy", ("AUROC", "average")] == pytest.approx(85.06)   # (90 + 80.1234) / 2 = 85.0617
    assert df.loc["neco", ("FPR95", "average")] == pytest.approx(22.5)


@pytest.mark.parametrize("id_scores, ood_scores, match", [
    ([], [1.0], "empty"),
    ([1.0, np.nan], [0.0], "NaN"),
    ([1.0], [np.inf], "NaN or inf"),
    ([[1.0, 2.0]], [0.0], "1-D"),
])
def test_input_errors(id_scores: list, ood_scores: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.ood_metrics(np.array(id_scores), np.array(ood_scores))


def test_bootstrap_option_errors() -> None:
    with pytest.raises(ValueError, match="n_boot"):
        metrics.bootstrap([1.0, 2.0], [0.0], n_boot=0)
    with pytest.raises(ValueError, match="level"):
        metrics.bootstrap([1.0, 2.0], [0.0], level=1.0)
    with pytest.raises(ValueError, match="empty"):
        metrics.table({})
