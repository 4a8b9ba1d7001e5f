"""Tests for helpers.metrics on hand-made cases with known answers."""

from __future__ import annotations

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
    assert set(out) == {"auroc", "fpr95", "fpr95_ood_positive", "aupr_in", "aupr_out"}
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


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True)])
def test_vectorised_rows_match_roc_curve(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    s_id, s_ood = rng.normal(0.8, 1.0, (6, 37)), rng.normal(0.0, 1.0, (6, 23))
    if ties:
        s_id, s_ood = np.round(s_id, 1), np.round(s_ood, 1)
    expected = [metrics.ood_metrics(a, b) for a, b in zip(s_id, s_ood, strict=True)]
    np.testing.assert_allclose(metrics._auroc_rows(s_id, s_ood), [e["auroc"] for e in expected], rtol=1e-12)
    np.testing.assert_allclose(metrics._fpr95_rows(s_id, s_ood), [e["fpr95"] for e in expected], rtol=1e-12)


def test_bootstrap_is_seeded_and_contains_estimate() -> None:
    rng = np.random.default_rng(3)
    s_id, s_ood = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 250)
    a = metrics.bootstrap(s_id, s_ood, n_boot=100, seed=7)
    assert a == metrics.bootstrap(s_id, s_ood, n_boot=100, seed=7)
    assert a != metrics.bootstrap(s_id, s_ood, n_boot=100, seed=8)
    point = metrics.ood_metrics(s_id, s_ood)
    for key in ("auroc", "fpr95"):
        low, high = a[key]
        assert low < point[key] < high
    wide = metrics.bootstrap(s_id, s_ood, n_boot=100, seed=7, level=0.99)["auroc"]
    assert wide[0] <= a["auroc"][0] and wide[1] >= a["auroc"][1]


def test_summary_and_table() -> None:
    rng = np.random.default_rng(4)
    s_id, s_ood = rng.normal(1.0, 1.0, 100), rng.normal(0.0, 1.0, 80)
    summ = metrics.summary(s_id, s_ood, n_boot=50, seed=0)
    assert list(summ) == ["auroc", "auroc_low", "auroc_high", "fpr95", "fpr95_low", "fpr95_high",
                          "fpr95_ood_positive", "aupr_in", "aupr_out"]
    assert summ["auroc"] == pytest.approx(metrics.ood_metrics(s_id, s_ood)["auroc"])
    assert np.isnan(metrics.summary(s_id, s_ood, n_boot=0)["auroc_low"])

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
