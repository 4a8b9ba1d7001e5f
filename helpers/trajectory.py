"""Collapse along training: the loops over checkpoints (and over layers) behind notebooks 03–05.

Every function here reads features through :func:`helpers.features.at_checkpoint` (cached on disk, one network
pass per checkpoint and set) and hands the tensors to the vectorised metrics of :mod:`helpers.collapse`,
:mod:`helpers.ood` and :mod:`helpers.metrics`; nothing here computes a metric itself. The results are plain
lists of dicts (one row per checkpoint, or per checkpoint and OOD set, or per checkpoint and block), ready for
``pandas.DataFrame`` and for ``report.save_metrics``.

Notation follows the book's chapter "Neural collapse": ``h`` features (N, D), ``y`` labels (N,), ``K`` classes,
``mu_c`` class means (K, D), ``mu_G`` global mean (D,), ``W`` classifier weights (K, D).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

from . import checkpoint as ckpt
from . import collapse, features, metrics, ood
from .config import Config
from .data import ImageSet, Splits
from .stats import ClassStats, as_tensor, class_means

LAYER_KEYS = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular")


# --------------------------------------------------------------------------- small pieces


def _check_checkpoints(checkpoints: dict[int, Path]) -> list[tuple[int, Path]]:
    """(epoch, path) pairs in epoch order; raises on an empty dict."""
    if not checkpoints:
        raise ValueError("no checkpoints given; run train.load_or_train(cfg, splits, device) and pass its "
                         "{epoch: path} dict.")
    return sorted(checkpoints.items())


def classifier(path: Path) -> tuple[Tensor, Tensor]:
    """Last-layer weights W (K, D) and bias b (K,) stored in the checkpoint at ``path``."""
    state = ckpt.load(path)["model"]
    return state["fc.weight"], state["fc.bias"]


def _id_sets(splits: Splits) -> dict[str, ImageSet]:
    return {"train": splits.train, "test": splits.test}


def heldout_predictions(test: features.Features, train_means: Tensor) -> dict[str, float]:
    """Accuracy, NCC accuracy and NC4 on held-out data, with the class means mu_c (K, D) of the *training* set.

    NC4 (the book, chapter "Neural collapse", eq. eq-nc4) on the test set: the share of test samples where the
    network's argmax differs from the nearest training class mean (Papyan et al. 2020, Figure 7).
    """
    ncc = collapse.ncc_predict(test.features, train_means)              # (N_test,)
    net = test.logits.argmax(dim=1)                                      # (N_test,)
    y = test.labels.long()
    return {"test_accuracy": float((net == y).double().mean()),
            "test_ncc_accuracy": float((ncc == y).double().mean()),
            "test_nc4": float((net != ncc).double().mean())}


# --------------------------------------------------------------------------- notebook 03: NC1-NC4


def collapse_at(cfg: Config, path: Path, splits: Splits, device: torch.device) -> dict[str, float]:
    """NC1, CDNV, NC2 (class means and W), NC3, NC4 and accuracies of one checkpoint.

    Train-set metrics from :func:`helpers.collapse.nc_metrics` (book, chapter "Neural collapse", eqs. eq-nc1,
    eq-cdnv, eq-nc2-equinorm, eq-nc2-equiangular, eq-nc3, eq-nc4) plus ``test_accuracy``,
    ``test_ncc_accuracy`` and ``test_nc4`` from :func:`heldout_predictions`.
    """
    f = features.at_checkpoint(cfg, path, splits, _id_sets(splits), device)
    W, _ = classifier(path)                                              # (K, D)
    train = f["train"]
    row = collapse.nc_metrics(train.features, train.labels, W, train.logits)
    means = class_means(as_tensor(train.features), train.labels.long(), W.shape[0])  # (K, D)
    return row | heldout_predictions(f["test"], means)


def collapse_over_training(cfg: Config, checkpoints: dict[int, Path], splits: Splits,
                           device: torch.device) -> list[dict[str, float]]:
    """One row of :func:`collapse_at` per checkpoint, in epoch order, each with its ``epoch``."""
    return [{"epoch": epoch} | collapse_at(cfg, path, splits, device)
            for epoch, path in _check_checkpoints(checkpoints)]


def gram_matrices(cfg: Config, path: Path, splits: Splits, device: torch.device) -> dict[str, Tensor]:
    """Cosine Gram matrices (K, K) of the centred class means, of the classifier rows and of a simplex ETF.

    The ideal of NC2 (book, chapter "Neural collapse", eqs. eq-etf and eq-nc2-equiangular): 1 on the diagonal,
    -1/(K-1) elsewhere. Keys ``"class means"``, ``"classifier W"``, ``"simplex ETF"``.
    """
    train = features.at_checkpoint(cfg, path, splits, {"train": splits.train}, device)["train"]
    W, _ = classifier(path)                                              # (K, D)
    h = as_tensor(train.features)                                        # (N, D)
    means = class_means(h, train.labels.long(), W.shape[0])              # (K, D)
    K = W.shape[0]
    return {"class means": collapse.gram(means, h.mean(0)), "classifier W": collapse.gram(W, torch.zeros(W.shape[1])),
            "simplex ETF": collapse.gram(collapse.simplex_etf(K))}


# --------------------------------------------------------------------------- projections


def pca_basis(X: Tensor, k: int) -> Tensor:
    """Top-``k`` principal directions of the rows of X (n, D), as columns (D, k).

    The rows are centred on their mean first; each direction's sign is fixed so that its largest-magnitude
    entry is positive, which makes the result deterministic.
    """
    if not 1 <= k <= min(X.shape):
        raise ValueError(f"k must lie in [1, {min(X.shape)}] for {X.shape[0]} rows of dimension {X.shape[1]}; "
                         f"got k={k}.")
    Xc = X - X.mean(0)                                                   # (n, D)
    _, _, Vh = torch.linalg.svd(Xc, full_matrices=False)                 # Vh (r, D)
    V = Vh[:k].T                                                         # (D, k)
    signs = torch.sign(V.gather(0, V.abs().argmax(0, keepdim=True)))     # (1, k)
    return V * signs


def align(current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Orthogonal map R (k, k) minimising ||current R - previous||_F (orthogonal Procrustes): R = U V^T from
    the SVD of current^T previous. Keeps consecutive PCA frames from flipping or spinning."""
    U, _, Vt = np.linalg.svd(current.T @ previous)
    return U @ Vt


def _frame(train: features.Features, shown: Tensor, per_class: int) -> dict[str, Any]:
    """2-D coordinates of the shown classes' means and of their first ``per_class`` samples."""
    h, y = as_tensor(train.features), train.labels.long()                # (N, D), (N,)
    means = class_means(h, y)[shown]                                     # (n, D)
    centre = means.mean(0)                                               # (D,)
    V = pca_basis(means, 2)                                              # (D, 2)
    idx = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in shown.tolist()])
    m2, s2 = (means - centre) @ V, (h[idx] - centre) @ V                 # (n, 2), (m, 2)
    scale = m2.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)              # RMS distance of the means
    return {"means": (m2 / scale).numpy(), "samples": (s2 / scale).numpy(), "sample_labels": y[idx].numpy(),
            "classes": shown.numpy()}


def mean_geometry_frames(cfg: Config, checkpoints: dict[int, Path], splits: Splits, device: torch.device,
                         n_classes: int = 10, per_class: int = 15) -> list[dict[str, Any]]:
    """Frames of an animation of the class-mean geometry: one dict per checkpoint.

    For the first ``min(n_classes, K)`` classes: their centred class means and up to ``per_class`` training
    samples each, projected on the top-2 principal directions of those means (per frame), divided by the
    RMS norm of the projected means (so every frame has the same scale), and rotated onto the previous frame
    with :func:`align`. Keys: ``epoch``, ``means`` (n, 2), ``samples`` (m, 2), ``sample_labels`` (m,),
    ``classes`` (n,). Under NC1 the samples shrink onto their means; under NC2 the means spread evenly.
    """
    K = splits.num_classes
    shown = torch.arange(min(n_classes, K))
    if shown.numel() < 3:
        raise ValueError(f"a 2-D picture of class means needs at least 3 classes; got n_classes={n_classes}, K={K}.")
    frames, previous = [], None
    for epoch, path in _check_checkpoints(checkpoints):
        train = features.at_checkpoint(cfg, path, splits, {"train": splits.train}, device)["train"]
        frame = {"epoch": epoch} | _frame(train, shown, per_class)
        if previous is not None:
            R = align(frame["means"], previous)                          # (2, 2)
            frame["means"], frame["samples"] = frame["means"] @ R, frame["samples"] @ R
        frames.append(frame)
        previous = frame["means"]
    return frames


# --------------------------------------------------------------------------- notebook 04: NC5 and NECO


def _with_ood(splits: Splits, ood_sets: dict[str, ImageSet]) -> dict[str, ImageSet]:
    return {"id:train": splits.train, "id:test": splits.test} | {f"ood:{k}": v for k, v in ood_sets.items()}


def nc5_at(cfg: Config, path: Path, splits: Splits, ood_sets: dict[str, ImageSet], device: torch.device,
           neco_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """NC5 (uncentred and centred) and NECO's detection metrics for every OOD set at one checkpoint.

    NC5 from the ID training features (book, chapter "Neural collapse", eqs. eq-nc5 and eq-nc5-centred;
    Ben Ammar et al., ICLR 2024). NECO (book, chapter "OOD scores", eq. eq-neco-maxlogit) is fitted on the
    training features of the same checkpoint and scored on the ID test set against each OOD set
    (:func:`helpers.metrics.ood_metrics`). One row per OOD set: ``ood_set``, ``nc5``, ``nc5_centred``,
    ``auroc``, ``fpr95``.
    """
    f = features.at_checkpoint(cfg, path, splits, _with_ood(splits, ood_sets), device)
    train, test = f["id:train"], f["id:test"]
    W, b = classifier(path)
    neco = ood.make_score("neco", **(neco_options or {})).fit(train.features, train.logits, train.labels, W, b)
    s_id = neco.score(test.features, test.logits)                        # (N_test,)
    rows = []
    for name in ood_sets:
        o = f[f"ood:{name}"]
        det = metrics.ood_metrics(s_id, neco.score(o.features, o.logits))
        rows.append({"ood_set": name, "nc5": collapse.nc5(train.features, train.labels, o.features),
                     "nc5_centred": collapse.nc5_centred(train.features, train.labels, o.features),
                     "auroc": det["auroc"], "fpr95": det["fpr95"]})
    return rows


def nc5_over_training(cfg: Config, checkpoints: dict[int, Path], splits: Splits, ood_sets: dict[str, ImageSet],
                      device: torch.device, neco_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of :func:`nc5_at` for every checkpoint (epoch order), each with its ``epoch``: one row per
    (checkpoint, OOD set)."""
    if not ood_sets:
        raise ValueError("ood_sets is empty; pass data.ood_sets(cfg) or at least one OOD ImageSet.")
    return [{"epoch": epoch} | row for epoch, path in _check_checkpoints(checkpoints)
            for row in nc5_at(cfg, path, splits, ood_sets, device, neco_options)]


def nc5_correlations(rows: list[dict[str, Any]], score: str = "auroc") -> dict[str, dict[str, float]]:
    """Spearman rank correlation over checkpoints between NC5 (both variants) and a detection metric, per OOD set.

    Keys per set: ``nc5_rho``, ``nc5_p``, ``nc5_centred_rho``, ``nc5_centred_p``, ``n`` (checkpoints). A
    negative rho with ``auroc`` means: the more orthogonal the OOD mean, the better the detection. A constant
    series has no rank correlation; it gives nan.
    """
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["ood_set"] for r in rows):
        sub = [r for r in rows if r["ood_set"] == name]
        out[name] = {"n": len(sub)}
        y = np.array([r[score] for r in sub])
        for key in ("nc5", "nc5_centred"):
            x = np.array([r[key] for r in sub])
            rho, p = float("nan"), float("nan")
            if len(sub) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rho, p = (float(v) for v in spearmanr(x, y))
            out[name] |= {f"{key}_rho": rho, f"{key}_p": p}
    return out


def _subset_rows(o: Tensor, n: int, seed: int) -> Tensor:
    """A seeded random subset of ``n`` rows of a feature matrix (all rows if there are fewer)."""
    perm = torch.randperm(o.shape[0], generator=torch.Generator().manual_seed(seed))
    return o[perm[:n]]


def ood_as_class(cfg: Config, path: Path, splits: Splits, ood_sets: dict[str, ImageSet],
                 device: torch.device) -> dict[str, dict[str, float]]:
    """NC1 and NC2 with each OOD set as an extra class K+1, next to the ID classes alone (key ``"ID only"``).

    :func:`helpers.collapse.nc_with_ood_class` on the ID training features and a seeded subset of the OOD
    features of the size of an average ID class, N/K, so that the extra class weighs in Sigma_W and mu_G like
    any other (book, chapter "Neural collapse", eqs. eq-nc1 and eq-nc2-equiangular; Ben Ammar et al., 2024).
    """
    f = features.at_checkpoint(cfg, path, splits, _with_ood(splits, ood_sets), device)
    train = f["id:train"]
    K = splits.num_classes
    keys = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "ncc_accuracy")
    base = collapse.nc_metrics(train.features, train.labels, num_classes=K)
    out = {"ID only": {k: base[k] for k in keys}}
    n = max(1, round(len(train) / K))
    for name in ood_sets:
        extra = _subset_rows(f[f"ood:{name}"].features, n, cfg.seed)   # (n, D)
        res = collapse.nc_with_ood_class(train.features, train.labels, extra, K)
        out[name] = {k: res[k] for k in keys}
    return out


def id_ood_projection(cfg: Config, path: Path, splits: Splits, ood_sets: dict[str, ImageSet], device: torch.device,
                      n_components: int = 2, per_set: int = 300) -> dict[str, Any]:
    """ID class means, ID test features and OOD features on the top principal directions of the ID class means.

    The basis is fitted on the centred ID training class means mu_c - mu_G (the span NECO keeps, book, chapter
    "Neural collapse", section NC5), so OOD features that are orthogonal to it (NC5) land near the origin.
    Keys: ``means`` (K, k), ``id`` (m, k) and ``ood`` {name: (m, k)}, with at most ``per_set`` seeded rows each.
    """
    f = features.at_checkpoint(cfg, path, splits, _with_ood(splits, ood_sets), device)
    train = f["id:train"]
    h = as_tensor(train.features)                                        # (N, D)
    means = class_means(h, train.labels.long(), splits.num_classes)      # (K, D)
    mu_g = h.mean(0)                                                     # (D,)
    V = pca_basis(means - mu_g, n_components)                            # (D, k)

    def project(x: Tensor) -> np.ndarray:
        return ((_subset_rows(as_tensor(x), per_set, cfg.seed) - mu_g) @ V).numpy()

    return {"means": ((means - mu_g) @ V).numpy(), "id": project(f["id:test"].features),
            "ood": {name: project(f[f"ood:{name}"].features) for name in ood_sets}}


# --------------------------------------------------------------------------- notebook 05: earlier layers


def _stats(h: Tensor, y: Tensor, K: int) -> ClassStats:
    return ClassStats.empty(K, h.shape[1]).update(h, y)


def layers_at(cfg: Config, path: Path, splits: Splits, device: torch.device) -> list[dict[str, Any]]:
    """NC1, CDNV, NC2 and NCC accuracy (train and test) of the pooled output of each of the 8 residual blocks.

    Streaming statistics (:class:`helpers.stats.ClassStats`, :func:`helpers.collapse.nc_metrics_from_stats`;
    book, chapter "Neural collapse", sections on earlier layers and streaming statistics, eqs. eq-nc1,
    eq-nc2-equiangular, eq-nc4). The NCC uses the training class means of that block. Block 8 is the
    penultimate layer h. One row per block: ``block`` (1..8), ``channels`` C_l, ``low_rank`` (C_l < K-1:
    Sigma_B then has rank at most C_l, and NC1 only sees that subspace), the keys of ``LAYER_KEYS``,
    ``nc1_per_direction``, ``ncc_train`` and ``ncc_test``.

    NC1 sums one signal-to-noise term per between-class direction and divides by K, so a layer with
    C_l < K-1 channels has fewer terms and a smaller NC1 for the same per-direction ratio.
    ``nc1_per_direction`` = NC1 K / min(K-1, C_l) averages over the directions instead and can be compared
    across layers of different width; CDNV (eq. eq-cdnv) needs no inverse and is comparable as well.
    """
    f = features.at_checkpoint(cfg, path, splits, _id_sets(splits), device, blocks=True)
    K = splits.num_classes
    y_train, y_test = f["train"].labels.long(), f["test"].labels.long()
    rows = []
    for i, (h_train, h_test) in enumerate(zip(f["train"].blocks, f["test"].blocks, strict=True), start=1):
        stats = _stats(h_train, y_train, K)
        nc = collapse.nc_metrics_from_stats(stats)
        means = stats.means()                                            # (K, C_l)
        C = h_train.shape[1]
        rows.append({"block": i, "channels": C, "low_rank": C < K - 1} | {k: nc[k] for k in LAYER_KEYS}
                    | {"nc1_per_direction": nc["nc1"] * K / min(K - 1, C)}
                    | {"ncc_train": float((collapse.ncc_predict(h_train, means) == y_train).double().mean()),
                       "ncc_test": float((collapse.ncc_predict(h_test, means) == y_test).double().mean())})
    return rows


def layers_over_training(cfg: Config, checkpoints: dict[int, Path], splits: Splits,
                         device: torch.device) -> list[dict[str, Any]]:
    """Rows of :func:`layers_at` for every checkpoint (epoch order), each with its ``epoch``: 8 rows per
    checkpoint."""
    return [{"epoch": epoch} | row for epoch, path in _check_checkpoints(checkpoints)
            for row in layers_at(cfg, path, splits, device)]


def decay_epoch_by_layer(rows: list[dict[str, Any]], key: str = "cdnv", fraction: float = 0.5) -> dict[int, int | None]:
    """For each block, the first epoch at which ``key`` has fallen to ``fraction`` of its value at the first
    checkpoint (None if it never does): a crude "when did this layer collapse" for :func:`layers_over_training`
    rows. If collapse propagated backwards from the last layer, later blocks would reach it earlier.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1); got {fraction}.")
    out: dict[int, int | None] = {}
    for block in sorted({r["block"] for r in rows}):
        series = sorted((r["epoch"], r[key]) for r in rows if r["block"] == block)
        start = series[0][1]
        out[block] = next((e for e, v in series if v <= fraction * start), None)
    return out
