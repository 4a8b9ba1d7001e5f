"""The generated Results chapter and result snapshots, on hand-made metrics with known values."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import artifacts, report, results
from helpers import checkpoint as ckpt
from helpers.artifacts import RunPaths, write_json
from helpers.model import build_model

from .conftest import make_tiny


def _summary(auroc: float, fpr: float) -> dict[str, float]:
    return dict(auroc=auroc, auroc_low=auroc - 0.01, auroc_high=auroc + 0.01, fpr95=fpr, fpr95_low=fpr - 0.02,
                fpr95_high=fpr + 0.02)


def _fake_run(cfg, auroc: float, commit: str = "abc1234", threads: int = 2) -> None:
    report.save_metrics(cfg, "training", dict(train_acc=1.0, test_acc=0.5, tpt_onset=7))
    report.save_metrics(cfg, "ood", dict(
        id_set="synthetic", ood_sets=["far", "near"],
        results={"msp": {"far": _summary(auroc, 0.3), "near": _summary(auroc - 0.2, 0.6)}},
        average={"msp": dict(auroc=auroc - 0.1, fpr95=0.45)},
        groups={"near": {"sets": ["near"], "mean": {"msp": _summary(auroc - 0.2, 0.6)}}},
        id_vs_id=dict(null_sd=0.02, scores={"msp": dict(auroc=0.51)})))
    report.save_metrics(cfg, "collapse", dict(
        num_classes=5, feature_dim=32, final=dict(nc1=0.25, nc3=0.1),
        trajectory=[dict(epoch=e, nc1=10.0 / e) for e in (1, 2, 4, 8)]))
    run_json = dict(profile="smoke", config=cfg.to_dict(), commit=commit, date="2026-11-24 00:00 UTC",
                    machine=dict(platform="test", processor="x86_64", cpus=2, threads=threads, torch="2", gpu=None),
                    data={"synthetic (train)": "helpers.synthetic, seed 0"}, seconds={"01_training": 10.0})
    write_json(RunPaths.of(cfg).run_json, run_json)
    ckpt.save_atomic({"model": build_model(5, 4).state_dict(), "epoch": 8}, RunPaths.of(cfg).checkpoints / "e8.pt")


def test_single_run_shows_intervals_and_collapse_trend(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    _fake_run(cfg, 0.9)
    md = results.results_markdown(cfg)
    assert "| `msp` | 90.0 [89.0, 91.0] | 70.0 [69.0, 71.0] | 80.0 | 70.0 [69.0, 71.0] |" in md   # near mean too
    assert "| Spearman ρ(epoch, NC1) | -1 |" in md                   # NC1 = 10/epoch falls monotonically
    assert "terminal phase (train accuracy ≥ 99 %) from epoch 7" in md
    assert "commit `abc1234`" in md
    assert "Data: `synthetic (train)` from helpers.synthetic, seed 0." in md     # run.json's sources


def test_snapshot_of_two_seeds_reports_mean_and_std(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "RESULTS", tmp_path / "results")
    cfgs = {s: make_tiny(tmp_path, seed=s) for s in (0, 1)}
    for seed, auroc in ((0, 0.8), (1, 0.9)):
        _fake_run(cfgs[seed], auroc)
    dest = results.write_snapshot(cfgs[1], [0, 1], {s: c.run_dir() for s, c in cfgs.items()})
    assert sorted(p.name for p in (dest / "metrics").iterdir()) == ["seed-0", "seed-1"]
    assert sorted(p.name for p in dest.glob("weights-seed-*.pt")) == ["weights-seed-0.pt", "weights-seed-1.pt"]
    assert dest == artifacts.snapshot_dir(cfgs[1])
    assert not list(dest.parent.glob("*.partial"))
    md = results.results_markdown(make_tiny(tmp_path / "other"))
    assert f"Snapshot `{dest.name}` (committed)" in md
    assert "| `msp` | 85.0 ± 7.1 | 65.0 ± 7.1 | 75.0 ± 7.1 |" in md   # mean ± sample std of (80, 90) etc.


def test_snapshot_replaces_the_previous_one_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "RESULTS", tmp_path / "results")
    cfg = make_tiny(tmp_path)
    _fake_run(cfg, 0.8)
    report.save_metrics(cfg, "stale", {"x": 1})
    results.write_snapshot(cfg, [cfg.seed], {cfg.seed: cfg.run_dir()})
    (cfg.run_dir() / "metrics" / "stale.json").unlink()
    dest = results.write_snapshot(cfg, [cfg.seed], {cfg.seed: cfg.run_dir()})
    assert not (dest / "metrics" / f"seed-{cfg.seed}" / "stale.json").exists()


def test_a_later_seed_joins_the_snapshot_of_the_same_setting_and_a_new_setting_replaces_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "RESULTS", tmp_path / "results")
    first, second = make_tiny(tmp_path, seed=0), make_tiny(tmp_path / "elsewhere", seed=1, eval_batch_size=7)
    _fake_run(first, 0.8, commit="aaaaaaa", threads=1)
    _fake_run(second, 0.9, commit="bbbbbbb")
    results.write_snapshot(first, [0], {0: first.run_dir()})
    dest = results.write_snapshot(second, [1], {1: second.run_dir()})     # another session, another machine
    assert sorted(p.name for p in dest.glob("weights-seed-*.pt")) == ["weights-seed-0.pt", "weights-seed-1.pt"]
    info = artifacts.read_json(dest / "run.json")
    assert info["commits"] == {"0": "aaaaaaa", "1": "bbbbbbb"} and sorted(info["seeds"]) == ["0", "1"]
    md = results.results_markdown(make_tiny(tmp_path / "other"))
    assert "commits `aaaaaaa` (seed 0), `bbbbbbb` (seed 1)" in md and "| `msp` | 85.0 ± 7.1 |" in md
    assert info["threads"] == {"0": 1, "1": 2} and "threads 1 (seed 0), 2 (seed 1)" in md
    longer = make_tiny(tmp_path / "longer", seed=1, epochs=4)
    _fake_run(longer, 0.7)
    dest = results.write_snapshot(longer, [1], {1: longer.run_dir()})
    assert [p.name for p in dest.glob("weights-seed-*.pt")] == ["weights-seed-1.pt"]
    assert artifacts.read_json(dest / "run.json")["commits"] == {"1": "abc1234"}
    assert ", 2 threads," in results.results_markdown(make_tiny(tmp_path / "other"))


def test_scores_are_ordered_by_the_registry() -> None:
    from helpers.ood import SCORES

    assert results._order(["zzz", *reversed(SCORES)]) == [*SCORES, "zzz"]


def test_metrics_and_figures_go_through_the_atomic_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    real = artifacts.atomic_write
    monkeypatch.setattr(artifacts, "atomic_write", lambda path, write, *a: written.append(path) or real(path, write))
    monkeypatch.setattr(report, "atomic_write", artifacts.atomic_write)
    cfg = make_tiny(tmp_path)
    report.save_metrics(cfg, "m", {"x": 0.1234567891})
    report.save_figure(cfg, plt.figure(), "f")
    assert [p.name for p in written] == ["m.json", "f.png"]
    assert report.load_metrics(report.metrics_dir(cfg), "m") == {"x": 0.123457}
    assert (report.figures_dir(cfg) / "f.png").read_bytes()[:4] == b"\x89PNG"


def _published_like_run(sign: float) -> dict:
    """An ood.json for CIFAR-100 whose near/far and CIFAR-10 AUROC are the published ones (sign 1) or reversed."""
    pub = artifacts.read_json(artifacts.RESULTS / "published.json")
    oo, neco = pub["openood_v15_cifar100_resnet18"]["scores"], pub["neco_table2_cifar100_resnet18"]["scores"]
    names = sorted(set(oo) | set(neco))

    def val(x: float | None) -> float:
        return 0.5 + sign * ((x or 50.0) / 100 - 0.5)

    res = {s: {"cifar10": _summary(val(neco.get(s, {}).get("cifar10", {}).get("auroc")), 0.5)} for s in names}
    groups = {g: {"sets": ["cifar10"], "mean": {s: {"auroc": val(oo.get(s, {}).get(f"{g}_auroc"))} for s in names}}
              for g in ("near", "far")}
    return dict(id_set="cifar100", ood_sets=["cifar10"], results=res, groups=groups)


@pytest.mark.parametrize("sign, rho", [(1.0, "1.00"), (-1.0, "-1.00")])
def test_comparison_sets_our_auroc_beside_the_published_rows_with_their_rank_agreement(sign: float, rho: str) -> None:
    lines = results.comparison_lines([_published_like_run(sign)])
    text = "\n".join(lines)
    assert "**Beside OpenOOD v1.5**" in text and "**Beside NECO**" in text
    assert f"near ρ = {rho}, far ρ = {rho}" in text and f"cifar10 ρ = {rho}" in text
    msp = next(line for line in lines if line.startswith("| `msp` |") and "80.27" in line)
    assert msp.split(" | ")[1:3] == (["80.3", "80.27"] if sign > 0 else ["19.7", "80.27"])
    assert results.comparison_lines([{**_published_like_run(sign), "id_set": "synthetic"}]) == []
