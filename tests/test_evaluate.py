"""``python -m helpers.evaluate`` end to end on a snapshot built from a tiny training run, and its one-line errors.

The snapshot is written by ``results.write_snapshot`` (metrics, run.json and the float32 weights of the last
checkpoint), as the runner writes it; the command's numbers must equal those of notebook 02's path (features of
the checkpoint through the cache, ``protocol.detect``), which shows that both share one code path.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import artifacts, data, evaluate, features, protocol, results, sweep, train
from helpers.artifacts import RunPaths, clean_json, write_json
from helpers.ood import SCORES

DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def snapshot(tiny_run, tmp_path_factory):
    """(cfg, snapshot folder, an image folder of grey and colour images of several sizes)."""
    root = tmp_path_factory.mktemp("evaluate")
    cfg = tiny_run[0]
    write_json(RunPaths.of(cfg).run_json, dict(profile=cfg.profile, config=cfg.to_dict(), seconds={"01": 1.0}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(artifacts, "RESULTS", root / "results")
        dest = results.write_snapshot(cfg, [cfg.seed], {cfg.seed: RunPaths.of(cfg).root})
    folder = root / "pets" / "cats"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (size, mode) in enumerate([((50, 40), "L"), ((20, 20), "RGB"), ((33, 64), "RGB")] * 4):
        shape = size[::-1] + ((3,) if mode == "RGB" else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return cfg, dest, root / "pets"


def test_snapshot_weights_are_a_small_float32_state_dict(snapshot):
    cfg, dest, _ = snapshot
    path = dest / f"weights-seed-{cfg.seed}.pt"
    state = torch.load(path, weights_only=True)
    assert path.stat().st_size <= 4 * 1024**2
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert evaluate.snapshot_seeds(dest) == [cfg.seed]


def test_write_weights_refuses_more_than_4_mb(snapshot, tmp_path, monkeypatch):
    cfg, _, _ = snapshot
    last = max(train.ckpt.list_checkpoints(train.checkpoint_dir(cfg)).items())[1]
    monkeypatch.setattr(results, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(ValueError, match="more than the 4 MB"):
        results.write_weights(last, tmp_path / "w.pt")
    assert not (tmp_path / "w.pt").exists()


def test_command_matches_notebook_02(snapshot, tmp_path, capsys):
    cfg, dest, pets = snapshot
    names = ["synthetic-digits", f"imagefolder:{pets}"]
    out = tmp_path / "ood.json"
    args = ["--snapshot", str(dest), "--ood", names[0], "--ood", names[1], "--json", str(out), "--n-boot", "20",
            "--data-root", cfg.data_root]
    assert evaluate.main(args) == 0
    printed = capsys.readouterr().out
    assert all(n in printed for n in names) and printed.count("AUROC % [95 % CI]") == 2
    got = json.loads(out.read_text())
    assert list(got) == sorted(names) and all(set(v) == set(SCORES) for v in got.values())
    splits = data.id_splits(cfg)                                          # notebook 02's route
    sets = sweep.detection_sets(cfg, splits, data.ood_sets(cfg, tuple(names)))
    last = max(train.ckpt.list_checkpoints(train.checkpoint_dir(cfg)).items())[1]
    feats = features.at_checkpoint(cfg, last, splits, sets, DEVICE)
    W, b = sweep.classifier(last)
    det = protocol.detect(feats, W, b, names, cfg.val_ood_dataset, n_boot=20, seed=cfg.seed)
    assert got == clean_json(protocol.by_set(det.results))
    assert len(sets[names[1]]) == 12 and 0 <= got[names[1]]["msp"]["auroc"] <= 1


@pytest.mark.parametrize("ood, code, message", [
    ("nope", 2, "error: unknown data set 'nope'; use one of "),
    ("imagefolder:/nonexistent/folder", 1, "error: image folder '/nonexistent/folder' does not exist"),
    ("imagefolder:EMPTY", 1, "error: no images in "),
])
def test_bad_set_names_give_one_line(snapshot, tmp_path, capsys, ood, code, message):
    cfg, dest, _ = snapshot
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    ood = ood.replace("EMPTY", str(tmp_path / "empty"))
    assert evaluate.main(["--snapshot", str(dest), "--ood", ood, "--data-root", cfg.data_root]) == code
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_missing_snapshot_and_seed_give_one_line(snapshot, tmp_path, capsys):
    _, dest, _ = snapshot
    assert evaluate.main(["--snapshot", str(tmp_path / "nowhere"), "--ood", "synthetic-digits"]) == 1
    assert capsys.readouterr().err == (f"error: snapshot folder {tmp_path / 'nowhere'} does not exist; pass "
                                       "--snapshot results/<profile>-<id set>.\n")
    assert evaluate.main(["--snapshot", str(dest), "--ood", "synthetic-digits", "--seed", "7"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {dest} has no weights for seed 7; it has seeds [0].")
    (tmp_path / "bare").mkdir()
    assert evaluate.main(["--snapshot", str(tmp_path / "bare"), "--ood", "synthetic-digits"]) == 1
    assert "it is not a snapshot with weights" in capsys.readouterr().err


def test_snapshot_path_is_computed_once(snapshot):
    cfg, dest, _ = snapshot
    assert dest.name == artifacts.snapshot_dir(cfg).name == "smoke-synthetic"
    assert not hasattr(results, "snapshot_name") and not hasattr(results, "SCORE_ORDER")


def test_unknown_option_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--ood", "x"])                                    # --snapshot is required
    assert "--snapshot" in capsys.readouterr().err




def test_model_route_on_a_checkpoint_matches_notebook_02(snapshot, tmp_path, capsys):
    """``--model helpers:PATH`` (hooks on the head, any classifier's route) gives notebook 02's detection numbers
    and notebook 03's NC metrics for the same checkpoint, data and seed."""
    from helpers import collapse

    cfg, _, pets = snapshot
    names = ["synthetic-digits", f"imagefolder:{pets}"]
    last = max(train.ckpt.list_checkpoints(train.checkpoint_dir(cfg)).items())[1]
    args = ["--model", f"helpers:{last}", "--ood", names[0], "--ood", names[1], "--n-boot", "20",
            "--data-root", cfg.data_root, "--out", str(tmp_path / "r"), "--device", "cpu"]
    assert evaluate.main(args) == 0
    assert capsys.readouterr().out.startswith(f"helpers:{last}: head fc (K=6, D=32), ID synthetic")
    got = json.loads((tmp_path / "r" / "report.json").read_text())
    splits = data.id_splits(cfg)                                          # notebook 02's route
    sets = sweep.detection_sets(cfg, splits, data.ood_sets(cfg, tuple(names)))
    feats = features.at_checkpoint(cfg, last, splits, sets, DEVICE)
    W, b = sweep.classifier(last)
    det = protocol.detect(feats, W, b, names, cfg.val_ood_dataset, n_boot=20, seed=cfg.seed)
    assert got["ood"] == clean_json(protocol.by_set(det.results))
    nc = collapse.nc_metrics(feats["train"].features, feats["train"].labels, W, feats["train"].logits)
    assert {k: got["collapse"][k] for k in nc} == clean_json(nc)
    assert got["nc5"]["synthetic-digits"]["nc5"] == round(
        collapse.nc5(feats["train"].features, feats["train"].labels, feats["synthetic-digits"].features), 6)
    assert got["mean"] == pytest.approx(splits.mean.tolist()) and got["sizes"]["test"] == len(splits.test)


def test_the_printed_table_keeps_its_columns_for_long_score_names() -> None:
    m = {k: v for key in ("auroc", "fpr95") for k, v in ((key, 0.7), (f"{key}_low", 0.6), (f"{key}_high", 0.8))}
    lines = evaluate.table({"msp": {"dtd10": m}, "neco_maxlogit": {"dtd10": m}}).splitlines()
    assert lines[0] == "dtd10"
    starts = {line.index(word) for line, word in zip(lines[1:], ["AUROC", "70.0", "70.0"], strict=True)}
    assert len(starts) == 1, lines                          # the AUROC column starts at one offset on every line
    assert all(line == line.rstrip() for line in lines)
