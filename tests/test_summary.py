"""The Summary page: its sentences on hand-made metrics whose findings are known, and the committed page current."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import summary
from helpers.artifacts import RESULTS, read_json, write_json

OPENOOD = read_json(RESULTS / "published.json")["openood_v15_cifar100_resnet18"]


def _ood(auroc: float) -> dict:
    scores = list(OPENOOD["scores"])                     # every score OpenOOD reports, all at the same AUROC ...
    mean = {s: {"auroc": auroc} for s in scores} | {"msp": {"auroc": auroc + 0.1}}   # ... but MSP
    return {"id_set": "cifar100", "results": {s: {} for s in scores},
            "groups": {"far": {"sets": ["dtd10"], "mean": mean}, "near": {"sets": ["cifar10"], "mean": mean}}}


def _snapshot(folder: Path, config: dict) -> Path:
    blocks = {1: 8.0, 2: 4.0, 3: 3.0, 4: 0.5}                                  # CDNV per block: 3 → 4 drops most
    for seed, onset in ((0, 7), (1, 9)):
        metrics = {
            "training": {"epochs": 12, "tpt_onset": onset, "train_acc": 0.9996, "test_acc": 0.5 + seed / 100},
            "ood": _ood(0.5),
            "collapse": {"trajectory": [{"epoch": 1, "nc1": 100.0}], "final": {
                "epoch": 12, "nc1": 10.0, "nc4": 0.001, "test_nc4": 0.15, "nc2_equiangular": 0.3, "nc3": 0.2}},
            "nc5": {"ood_sets": ["cifar10", "dtd10", "mnist", "tinyimagenet"], "spearman": {
                "tinyimagenet": {"n": 6, "nc5_centred_rho": -0.3, "nc5_centred_p": 0.4},     # negative, not significant
                "cifar10": {"n": 6, "nc5_centred_rho": -0.9, "nc5_centred_p": 0.01},
                "dtd10": {"n": 6, "nc5_centred_rho": 0.8 - seed, "nc5_centred_p": 0.02},    # the sign flips
                "mnist": {"n": 6, "nc5_centred_rho": 0.9, "nc5_centred_p": 0.01}}},
            "layers": {"num_classes": 5,
                       "final": [{"block": b, "cdnv": c, "channels": 2 * b} for b, c in blocks.items()]},
        }
        for name, value in metrics.items():
            write_json(folder / "metrics" / f"seed-{seed}" / f"{name}.json", value)
    data = {"cifar100 (train)": "../shared/data/cifar100-png.tar.gz:train (lossless PNG, a seeded re-split)"}
    write_json(folder / "run.json", {"profile": "cpu", "config": config, "seeds": {"0": {}, "1": {}}, "data": data})
    return folder


def test_the_findings_are_the_ones_the_metrics_hold(tmp_path: Path) -> None:
    config = {"id_dataset": "cifar100", "width": 16, "epochs": 12, "augment": True, "plain_epochs": 8}
    page = " ".join(summary.summary_markdown(_snapshot(tmp_path / "snap", config)).split())    # unwrapped
    assert ("a width-16 ResNet-18 trained 12 epochs with augmentation for epochs 1–4 and without it for the last 8 on "
            "`cifar100` (a seeded re-split, not the official split; read from ../shared/data/cifar100-png.tar.gz:train)"
            "; seeds 0 and 1") in page
    assert "starts at epochs 7 / 9; training accuracy ends at 99.96 / 99.96 %. ID test accuracy is 50.0 / 51.0 %" \
        in page
    assert f"{OPENOOD['setup']['id_test_accuracy_percent'] - 50.5:.0f} points below" in page
    assert "Near OOD (`cifar10`): MSP 60.0 / 60.0 %," in page and "Far OOD (`dtd10`): MSP 60.0 / 60.0 %," in page
    gaps = [v[f"{g}_auroc"] - 50 for s, v in OPENOOD["scores"].items() for g in ("near", "far") if s != "msp"]
    gaps += [OPENOOD["scores"]["msp"][f"{g}_auroc"] - 60 for g in ("near", "far")]
    assert f"are {min(gaps):.0f} to {max(gaps):.0f} AUROC points below" in page
    assert "NC1 falls 10-fold, from 100 / 100 at epoch 1 to 10 / 10 at epoch 12" in page
    assert "far from their limit of 0" in page
    assert ("significantly negative (p < 0.05 in every seed) for `cifar10` (ρ = -0.90 / -0.90); significantly "
            "positive for `mnist` (ρ = 0.90 / 0.90); not significant with one sign in every seed for `dtd10` "
            "(ρ = 0.80 / -0.20) and `tinyimagenet` (ρ = -0.30 / -0.30)") in page
    assert "holds for 1 of 4 OOD sets" in page
    assert "from 8.0 / 8.0 (block 1) to 0.50 / 0.50 (block 4), falling block by block" in page
    assert "drops most into blocks 2 and 4" in page                    # 8 → 4 (x2) and 3 → 0.5 (x6); 4 → 3 is x1.3
    assert "Blocks 2, 3 and 4 are the only ones with at least K − 1 = 4 channels" in page


def test_an_unaugmented_snapshot_without_recorded_sources_says_so(tmp_path: Path) -> None:
    folder = _snapshot(tmp_path / "snap", {"id_dataset": "cifar100", "width": 8, "epochs": 12, "augment": False})
    info = read_json(folder / "run.json")
    del info["data"]
    (folder / "run.json").write_text(json.dumps(info))
    page = " ".join(summary.summary_markdown(folder).split())
    assert "trained 12 epochs without augmentation on `cifar100` (CIFAR-100, 100 fine labels: the official split from" \
           " torchvision, or else the lossless copy in ../shared/data, a seeded re-split (500 train / 100 test per" \
           " class); which one this snapshot read is not recorded in its `run.json`)" in page


def test_the_committed_summary_page_is_current() -> None:
    assert summary.PAGE.read_text() == summary.summary_markdown(), (
        "book/summary.md is stale: python -m helpers.summary --write")
