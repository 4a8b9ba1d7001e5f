"""The generated Results chapter and result snapshots, on hand-made metrics with known values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import report, results

from .conftest import make_tiny


def _summary(auroc: float, fpr: float) -> dict[str, float]:
    return dict(auroc=auroc, auroc_low=auroc - 0.01, auroc_high=auroc + 0.01, fpr95=fpr, fpr95_low=fpr - 0.02,
                fpr95_high=fpr + 0.02)


def _fake_run(cfg, auroc: float) -> None:
    report.save_metrics(cfg, "training", dict(train_acc=1.0, test_acc=0.5, tpt_onset=7))
    report.save_metrics(cfg, "ood", dict(
        id_set="synthetic", ood_sets=["far", "near"],
        results={"msp": {"far": _summary(auroc, 0.3), "near": _summary(auroc - 0.2, 0.6)}},
        average={"msp": dict(auroc=auroc - 0.1, fpr95=0.45)},
        id_vs_id=dict(null_sd=0.02, scores={"msp": dict(auroc=0.51)})))
    report.save_metrics(cfg, "collapse", dict(
        num_classes=5, feature_dim=32, final=dict(nc1=0.25, nc3=0.1),
        trajectory=[dict(epoch=e, nc1=10.0 / e) for e in (1, 2, 4, 8)]))
    run_json = dict(profile="smoke", config=cfg.to_dict(), commit="abc1234", date="2026-11-24 00:00 UTC",
                    machine=dict(platform="test", processor="x86_64", cpus=2, torch="2", gpu=None),
                    seconds={"01_training": 10.0})
    (cfg.run_dir() / "run.json").write_text(json.dumps(run_json))


def test_single_run_shows_intervals_and_collapse_trend(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    _fake_run(cfg, 0.9)
    md = results.results_markdown(cfg)
    assert "| `msp` | 90.0 [89.0, 91.0] | 70.0 [69.0, 71.0] | 80.0 |" in md
    assert "| Spearman ρ(epoch, NC1) | -1 |" in md                   # NC1 = 10/epoch falls monotonically
    assert "terminal phase (train accuracy ≥ 99 %) from epoch 7" in md
    assert "commit `abc1234`" in md


def test_snapshot_of_two_seeds_reports_mean_and_std(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    cfgs = {s: make_tiny(tmp_path, seed=s) for s in (0, 1)}
    for seed, auroc in ((0, 0.8), (1, 0.9)):
        _fake_run(cfgs[seed], auroc)
    dest = results.write_snapshot(cfgs[1], [0, 1], {s: c.run_dir() for s, c in cfgs.items()})
    assert sorted(p.name for p in (dest / "metrics").iterdir()) == ["seed-0", "seed-1"]
    assert not list(dest.parent.glob("*.partial"))
    md = results.results_markdown(make_tiny(tmp_path / "other"))
    assert f"Snapshot `{dest.name}` (committed)" in md
    assert "| `msp` | 85.0 ± 7.1 | 65.0 ± 7.1 | 75.0 ± 7.1 |" in md   # mean ± sample std of (80, 90) etc.


def test_snapshot_replaces_the_previous_one_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    cfg = make_tiny(tmp_path)
    _fake_run(cfg, 0.8)
    report.save_metrics(cfg, "stale", {"x": 1})
    results.write_snapshot(cfg, [cfg.seed], {cfg.seed: cfg.run_dir()})
    (cfg.run_dir() / "metrics" / "stale.json").unlink()
    dest = results.write_snapshot(cfg, [cfg.seed], {cfg.seed: cfg.run_dir()})
    assert not (dest / "metrics" / f"seed-{cfg.seed}" / "stale.json").exists()
