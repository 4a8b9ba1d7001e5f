"""Tests for helpers.sweep on the tiny real run of ``conftest.tiny_run`` (6 classes, width 4, 2 epochs, a
checkpoint per epoch)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import artifacts, collapse, features, sweep, train
from helpers.stats import ClassStats, class_means

DEVICE = torch.device("cpu")
OOD_NAMES = ("synthetic-digits", "synthetic-near")


@pytest.fixture(scope="module")
def run(tiny_run):
    """The session's tiny trained run: (cfg, splits, ood sets, {epoch: checkpoint})."""
    return tiny_run


def _direct(cfg, splits, path, ds) -> features.Features:
    """Features computed straight from the model, bypassing the cache."""
    model = train.load_model(path, cfg, splits.num_classes, DEVICE)
    return features.extract(model, ds, splits.mean, splits.std, DEVICE, blocks=True)


def test_run_has_one_checkpoint_per_epoch(run):
    assert list(run[3]) == [1, 2]


def test_collapse_rows_match_direct_computation(run):
    cfg, splits, _, checkpoints = run
    rows = sweep.collapse_over_training(cfg, checkpoints, splits, DEVICE)
    assert [r["epoch"] for r in rows] == [1, 2]
    last = _direct(cfg, splits, checkpoints[2], splits.train)
    W, _ = sweep.classifier(checkpoints[2])
    expected = collapse.nc_metrics(last.features, last.labels, W, last.logits)
    for key, value in expected.items():
        assert rows[-1][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    test = _direct(cfg, splits, checkpoints[2], splits.test)
    assert rows[-1]["test_accuracy"] == pytest.approx(float((test.logits.argmax(1) == test.labels).float().mean()))
    for key in ("nc4", "test_nc4", "accuracy", "test_accuracy", "test_ncc_accuracy"):
        assert 0.0 <= rows[-1][key] <= 1.0


def test_heldout_nc4_known_answer():
    """Test samples sit on the training means; the logits disagree with the nearest mean on 1 of 4.

    ``sweep.collapse_at`` measures the held-out NC4 with ``collapse.heldout_predictions`` and the training means."""
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)   # (K=3, D=2)
    h = means[[0, 1, 2, 2]]                                                               # (4, 2)
    logits = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 1]]                              # last sample -> class 1
    out = collapse.heldout_predictions(h, torch.tensor([0, 1, 2, 2]), means, logits)
    assert out == {"accuracy": 0.75, "ncc_accuracy": 1.0, "nc4": 0.25}


def test_gram_matrices_shapes_and_ideal(run):
    cfg, splits, _, checkpoints = run
    grams = sweep.gram_matrices(cfg, checkpoints[2], splits, DEVICE)
    K = splits.num_classes
    assert list(grams) == ["class means", "classifier W", "simplex ETF"]
    for G in grams.values():
        assert G.shape == (K, K)
        assert torch.allclose(G.diagonal(), torch.ones(K, dtype=G.dtype))
    off = grams["simplex ETF"][~torch.eye(K, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / (K - 1)))


def test_nc5_rows_one_per_checkpoint_and_set(run):
    cfg, splits, oods, checkpoints = run
    rows = sweep.nc5_over_training(cfg, checkpoints, splits, oods, DEVICE)
    assert [(r["epoch"], r["ood_set"]) for r in rows] == [(e, n) for e in (1, 2) for n in OOD_NAMES]
    for r in rows:
        assert 0 <= r["nc5"] <= 1 and 0 <= r["nc5_centred"] <= 1 and 0 <= r["auroc"] <= 1
    train_f = _direct(cfg, splits, checkpoints[1], splits.train)
    ood_f = _direct(cfg, splits, checkpoints[1], oods[OOD_NAMES[0]])
    assert rows[0]["nc5"] == pytest.approx(collapse.nc5(train_f.features, train_f.labels, ood_f.features))


def test_nc5_correlations_known_answers():
    rows = [{"epoch": e, "ood_set": "a", "nc5": 1 / e, "nc5_centred": 0.5, "auroc": 0.5 + 0.01 * e}
            for e in range(1, 6)]
    out = sweep.nc5_correlations(rows)["a"]
    assert out["n"] == 5
    assert out["nc5_rho"] == pytest.approx(-1.0)
    assert math.isnan(out["nc5_centred_rho"])          # constant series: no rank correlation


def test_ood_as_class_and_projection(run):
    cfg, splits, oods, checkpoints = run
    table = sweep.ood_as_class(cfg, checkpoints[2], splits, oods, DEVICE)
    assert list(table) == ["ID only", *OOD_NAMES]
    assert all(set(v) == {"nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "ncc_accuracy"} for v in table.values())
    proj = sweep.id_ood_projection(cfg, checkpoints[2], splits, oods, DEVICE, n_components=3, per_set=7)
    assert proj["means"].shape == (splits.num_classes, 3)
    assert proj["id"].shape == (7, 3) and all(x.shape == (7, 3) for x in proj["ood"].values())
    n_c = np.bincount(splits.train.labels.numpy())                 # sum_c n_c (mu_c - mu_G) = 0
    assert np.allclose(n_c @ proj["means"], 0, atol=1e-8)


def test_layer_rows_eight_blocks_and_block_eight_is_penultimate(run):
    cfg, splits, _, checkpoints = run
    rows = sweep.layers_over_training(cfg, checkpoints, splits, DEVICE)
    assert len(rows) == 8 * len(checkpoints)
    last = [r for r in rows if r["epoch"] == 2]
    assert [r["block"] for r in last] == list(range(1, 9))
    assert [r["channels"] for r in last] == [4, 4, 8, 8, 16, 16, 32, 32]
    assert [r["low_rank"] for r in last] == [True, True] + [False] * 6      # K - 1 = 5 > 4 channels
    penultimate = sweep.collapse_over_training(cfg, checkpoints, splits, DEVICE)[-1]
    assert last[-1]["nc1"] == pytest.approx(penultimate["nc1"], rel=1e-6)
    assert last[-1]["ncc_train"] == pytest.approx(penultimate["ncc_accuracy"])
    assert last[0]["nc1_per_direction"] == pytest.approx(last[0]["nc1"] * 6 / 4)


def test_geometry_frames(run):
    cfg, splits, _, checkpoints = run
    frames = sweep.mean_geometry_frames(cfg, checkpoints, splits, DEVICE, n_classes=4, per_class=3)
    assert [f["epoch"] for f in frames] == [1, 2]
    for f in frames:
        assert f["means"].shape == (4, 2) and f["samples"].shape == (12, 2)
        assert np.mean(np.sum(f["means"] ** 2, axis=1)) == pytest.approx(1.0)   # RMS-normalised


@pytest.mark.parametrize("n_frames", [1, 2])
def test_class_means_gif_has_one_frame_per_checkpoint(run, tmp_path: Path, n_frames: int):
    """A one-checkpoint run (e.g. ``-p epochs 1``) gives a one-frame GIF, not a Pillow error."""
    from PIL import Image

    from helpers import plots

    cfg, splits, _, checkpoints = run
    frames = sweep.mean_geometry_frames(cfg, checkpoints, splits, DEVICE, n_classes=4, per_class=3)[:n_frames]
    with Image.open(plots.class_means_gif(frames, tmp_path / "means.gif")) as gif:
        assert gif.format == "GIF" and gif.n_frames == n_frames


def test_warm_rerun_reads_the_cache(run, monkeypatch):
    cfg, splits, oods, checkpoints = run
    first = (sweep.collapse_over_training(cfg, checkpoints, splits, DEVICE),
             sweep.nc5_over_training(cfg, checkpoints, splits, oods, DEVICE))
    files = sorted((cfg.run_dir() / "features").rglob("*"))

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran although the features are cached")

    monkeypatch.setattr(features, "extract", no_network)
    again = (sweep.collapse_over_training(cfg, checkpoints, splits, DEVICE),
             sweep.nc5_over_training(cfg, checkpoints, splits, oods, DEVICE))
    assert again == first
    assert sorted((cfg.run_dir() / "features").rglob("*")) == files


def test_layer_rows_streamed_in_batches_equal_all_features_at_once(run):
    """The streaming pass (7-image batches) gives the numbers of the whole (N, C_l) block tensors, with blocks
    1-7 rounded to float16 as the feature cache stores them; no features are written, only the rows."""
    cfg, splits, _, checkpoints = run
    files = sorted((cfg.run_dir() / "features").rglob("*"))
    rows = sweep.layers_at(dataclasses.replace(cfg, eval_batch_size=7), checkpoints[2], splits, DEVICE)
    tr, te = (_direct(cfg, splits, checkpoints[2], ds) for ds in (splits.train, splits.test))
    K = splits.num_classes
    for i, row in enumerate(rows):
        h, h_test = ((f.blocks[i].half().float() if i < 7 else f.blocks[i]) for f in (tr, te))
        whole = collapse.nc_metrics(h, tr.labels, num_classes=K)
        for key in sweep.LAYER_KEYS:
            assert row[key] == pytest.approx(whole[key], rel=1e-9), (i, key)
        assert row["ncc_train"] == whole["ncc_accuracy"]
        means = class_means(h.double(), tr.labels, K)
        assert row["ncc_test"] == float((collapse.ncc_predict(h_test, means) == te.labels).double().mean())
    written = set((cfg.run_dir() / "features").rglob("*.pt")) - set(files)
    assert [p.name.split("-")[0] for p in written] == ["layers"]


def test_layer_rows_run_the_network_once_over_each_set_and_leave_no_stash(run, monkeypatch, tmp_path):
    """The NCC on the training set reads the statistics pass back from disk instead of a second network pass."""
    cfg, splits, _, checkpoints = run
    cfg = dataclasses.replace(cfg, eval_batch_size=3)                   # rows of their own cache file
    passes, network = [], sweep.pooled_batches

    def counted(model, ds, *args, **kwargs):
        passes.append(ds.name)
        return network(model, ds, *args, **kwargs)

    monkeypatch.setattr(sweep, "pooled_batches", counted)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))                 # where the stash goes
    saved = []
    monkeypatch.setattr(sweep, "write_torch", lambda obj, path: saved.append(path) or artifacts.write_torch(obj, path))
    rows = sweep.layers_at(cfg, checkpoints[1], splits, DEVICE)
    assert passes == [splits.train.name, splits.test.name]
    assert len(saved) == math.ceil(len(splits.train) / 3) and saved[0].parent.parent == tmp_path
    assert not list(tmp_path.iterdir())                                     # the stash is gone
    monkeypatch.setattr(sweep, "pooled_batches", network)
    fresh = dataclasses.replace(cfg, eval_batch_size=4)
    assert [r["ncc_train"] for r in rows] == [r["ncc_train"] for r in sweep.layers_at(fresh, checkpoints[1], splits,
                                                                                      DEVICE)]


def test_layer_rows_come_from_the_cache_when_warm_and_a_damaged_file_is_rewritten(run, monkeypatch):
    cfg, splits, _, checkpoints = run
    cfg = dataclasses.replace(cfg, eval_batch_size=5)                   # rows of their own cache file
    first = sweep.layers_at(cfg, checkpoints[1], splits, DEVICE)
    cache = sweep.features.measurement_path(cfg.run_dir() / "features", checkpoints[1], "layers",
                                            [splits.train, splits.test], splits.mean, splits.std, "batch 5|cpu")
    assert cache.exists()

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran although the layer rows are cached")

    with monkeypatch.context() as m:
        m.setattr(sweep.train, "load_model", no_network)
        assert sweep.layers_at(cfg, checkpoints[1], splits, DEVICE) == first
    cache.write_bytes(cache.read_bytes()[:40])                            # truncated
    with pytest.warns(UserWarning, match="unusable"):
        assert sweep.layers_at(cfg, checkpoints[1], splits, DEVICE) == first
    assert sweep.layers_at(cfg, checkpoints[1], splits, DEVICE) == first  # rewritten whole


def test_block_stats_of_batches_equal_one_update():
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(50, 3, generator=g), torch.randn(50, 6, generator=g)]
    y = torch.arange(50) % 4
    batches = (([b[s:s + 8] for b in blocks], y[s:s + 8]) for s in range(0, 50, 8))   # a generator, read once
    streamed = sweep.block_stats(batches, 4)
    for st, b in zip(streamed, blocks, strict=True):
        whole = ClassStats.empty(4, b.shape[1]).update(b, y)
        assert torch.allclose(st.within_cov(), whole.within_cov(), atol=1e-12)
        assert torch.equal(st.counts, whole.counts)
    assert sweep.ncc_accuracy(iter([([torch.eye(2)], torch.tensor([0, 0]))]), [torch.eye(2).double()]) == [0.5]


def test_over_checkpoints_is_the_one_loop():
    rows = sweep.over_checkpoints({5: Path("b"), 1: Path("a")}, lambda p: [{"p": p.name}, {"p": p.name * 2}])
    assert rows == [{"epoch": 1, "p": "a"}, {"epoch": 1, "p": "aa"}, {"epoch": 5, "p": "b"}, {"epoch": 5, "p": "bb"}]
    assert list(sweep.over_checkpoints({2: Path("x")}, lambda p: {"one": 1})[0]) == ["epoch", "one"]


def test_pca_basis_and_align_known_answers():
    X = torch.tensor([[-2.0, 0.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.5, 1.0], [0.0, -0.5, 1.0]], dtype=torch.float64)
    V = sweep.pca_basis(X, 2)
    assert torch.allclose(V, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
    P = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    theta = 0.7
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert np.allclose(P @ R @ sweep.align(P @ R, P), P)


def test_bad_inputs_raise(run):
    cfg, splits, _, checkpoints = run
    with pytest.raises(ValueError, match="no checkpoints"):
        sweep.collapse_over_training(cfg, {}, splits, DEVICE)
    with pytest.raises(ValueError, match="ood_sets is empty"):
        sweep.nc5_over_training(cfg, checkpoints, splits, {}, DEVICE)
    with pytest.raises(ValueError, match="k must lie"):
        sweep.pca_basis(torch.zeros(3, 2, dtype=torch.float64), 3)


def test_decay_epoch_by_layer_known_answer():
    rows = [{"epoch": e, "block": b, "cdnv": v} for b, values in ((1, (4.0, 3.0, 1.9)), (2, (2.0, 1.0, 0.5)))
            for e, v in zip((1, 5, 9), values, strict=True)]
    assert sweep.decay_epoch_by_layer(rows) == {1: 9, 2: 5}
    assert sweep.decay_epoch_by_layer(rows, fraction=0.2) == {1: None, 2: None}
    with pytest.raises(ValueError, match="fraction"):
        sweep.decay_epoch_by_layer(rows, fraction=1.5)
