"""The one sweep over checkpoints (and layers): features in, rows of numbers out, behind notebooks 02–05.

The loop over checkpoints lives only in :func:`over_checkpoints`. Features come from
:func:`helpers.features.at_checkpoint` (cached on disk, one network pass per checkpoint and set), except for
the earlier layers, whose class statistics are accumulated batch by batch inside the inference loop
(:func:`block_stats`), so their memory does not grow with the number of images. The numbers themselves come
from the pure modules: :mod:`helpers.collapse` (NC1–NC5), :mod:`helpers.protocol` (the OOD protocol),
:mod:`helpers.ood`, :mod:`helpers.metrics` and :mod:`helpers.stats`. The results are plain lists of dicts (one
row per checkpoint, or per checkpoint and OOD set, or per checkpoint and block), ready for
``pandas.DataFrame`` and for ``report.save_metrics``.

Notation follows the book's chapter "Neural collapse": ``h`` features (N, D), ``y`` labels (N,), ``K`` classes,
``mu_c`` class means (K, D), ``mu_G`` global mean (D,), ``W`` classifier weights (K, D).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import checkpoint as ckpt
from . import collapse, data, features, protocol, train
from .artifacts import RunPaths, write_torch
from .config import Config
from .data import ImageSet, Splits
from .device import eval_batch
from .model import ResNet18
from .stats import ClassStats, as_tensor, class_means, spearman

LAYER_KEYS = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular")
Row = dict[str, Any]


# ------------------------------------------------------------------------------------ the one loop
def ordered(checkpoints: dict[int, Path]) -> list[tuple[int, Path]]:
    """(epoch, path) pairs in epoch order; raises on an empty dict."""
    if not checkpoints:
        raise ValueError("no checkpoints given; run train.load_or_train(cfg, splits, device) and pass its "
                         "{epoch: path} dict.")
    return sorted(checkpoints.items())


def over_checkpoints(checkpoints: dict[int, Path], measure: Callable[[Path], Row | list[Row]]) -> list[Row]:
    """``measure(path)`` at every checkpoint in epoch order, each row with its ``epoch`` first.

    ``measure`` returns one row (a dict) or several (a list of dicts, e.g. one per OOD set or block).
    """
    rows = []
    for epoch, path in ordered(checkpoints):
        out = measure(path)
        rows += [{"epoch": epoch} | r for r in (out if isinstance(out, list) else [out])]
    return rows


def classifier(path: Path) -> tuple[Tensor, Tensor]:
    """Last-layer weights W (K, D) and bias b (K,) stored in the checkpoint at ``path``."""
    state = ckpt.load(path)["model"]
    return state["fc.weight"], state["fc.bias"]


def _id_sets(splits: Splits) -> dict[str, ImageSet]:
    return {"id:train": splits.train, "id:test": splits.test}


def _with_ood(splits: Splits, ood_sets: dict[str, ImageSet]) -> dict[str, ImageSet]:
    return _id_sets(splits) | {f"ood:{k}": v for k, v in ood_sets.items()}


# ----------------------------------------------------------------------------- notebook 02: detection
def detection_sets(cfg: Config, splits: Splits, ood_sets: dict[str, ImageSet]) -> dict[str, ImageSet]:
    """The sets :func:`helpers.protocol.detect` reads: ID train / val / test, the OOD test sets and the
    validation OOD set ``cfg.val_ood_dataset`` (loaded here; it must not also be a test set)."""
    val = cfg.val_ood_dataset
    if val in ood_sets:
        raise ValueError(f"{val!r} is both a test OOD set and the validation OOD set; drop it from one.")
    return {"train": splits.train, "val": splits.val, "test": splits.test, **ood_sets,
            val: data.load(val, "test", cfg)}


# ---------------------------------------------------------------------------- notebook 03: NC1-NC4
def collapse_at(cfg: Config, path: Path, splits: Splits, device: torch.device) -> Row:
    """NC1, CDNV, NC2 (class means and W), NC3, NC4 and accuracies of one checkpoint.

    Train-set metrics from :func:`helpers.collapse.nc_metrics` (book, chapter "Neural collapse", eqs. eq-nc1,
    eq-cdnv, eq-nc2-equinorm, eq-nc2-equiangular, eq-nc3, eq-nc4). On the test set, with the *training* class
    means (Papyan et al. 2020, Figure 7): ``test_accuracy``, ``test_ncc_accuracy`` and ``test_nc4``.
    """
    f = features.at_checkpoint(cfg, path, splits, _id_sets(splits), device)
    W, _ = classifier(path)                                              # (K, D)
    train, test = f["id:train"], f["id:test"]
    means = class_means(as_tensor(train.features), train.labels.long(), W.shape[0])  # (K, D)
    held = collapse.heldout_predictions(as_tensor(test.features), test.labels.long(), means, as_tensor(test.logits))
    return collapse.nc_metrics(train.features, train.labels, W, train.logits) | {
        "test_accuracy": held["accuracy"], "test_ncc_accuracy": held["ncc_accuracy"], "test_nc4": held["nc4"]}


def collapse_over_training(cfg: Config, checkpoints: dict[int, Path], splits: Splits,
                           device: torch.device) -> list[Row]:
    """One row of :func:`collapse_at` per checkpoint, in epoch order, each with its ``epoch``."""
    return over_checkpoints(checkpoints, partial(collapse_at, cfg, splits=splits, device=device))


def gram_matrices(cfg: Config, path: Path, splits: Splits, device: torch.device) -> dict[str, Tensor]:
    """Cosine Gram matrices (K, K) of the centred class means, of the classifier rows and of a simplex ETF.

    The ideal of NC2 (book, chapter "Neural collapse", eqs. eq-etf and eq-nc2-equiangular): 1 on the diagonal,
    -1/(K-1) elsewhere. Keys ``"class means"``, ``"classifier W"``, ``"simplex ETF"``.
    """
    train = features.at_checkpoint(cfg, path, splits, {"train": splits.train}, device)["train"]
    W, _ = classifier(path)                                              # (K, D)
    h = as_tensor(train.features)                                        # (N, D)
    means = class_means(h, train.labels.long(), W.shape[0])              # (K, D)
    return {"class means": collapse.gram(means, h.mean(0)), "classifier W": collapse.gram(W, torch.zeros(W.shape[1])),
            "simplex ETF": collapse.gram(collapse.simplex_etf(W.shape[0]))}


# ------------------------------------------------------------------------------------- projections
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


def _frame(cfg: Config, path: Path, splits: Splits, device: torch.device, shown: Tensor, per_class: int) -> Row:
    """2-D coordinates of the shown classes' means and of their first ``per_class`` samples."""
    train = features.at_checkpoint(cfg, path, splits, {"train": splits.train}, device)["train"]
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
                         n_classes: int = 10, per_class: int = 15) -> list[Row]:
    """Frames of an animation of the class-mean geometry: one dict per checkpoint.

    For the first ``min(n_classes, K)`` classes: their centred class means and up to ``per_class`` training
    samples each, projected on the top-2 principal directions of those means (per frame), divided by the
    RMS norm of the projected means (so every frame has the same scale), and rotated onto the previous frame
    with :func:`align`. Keys: ``epoch``, ``means`` (n, 2), ``samples`` (m, 2), ``sample_labels`` (m,),
    ``classes`` (n,). Under NC1 the samples shrink onto their means; under NC2 the means spread evenly.
    """
    shown = torch.arange(min(n_classes, splits.num_classes))
    if shown.numel() < 3:
        raise ValueError(f"a 2-D picture of class means needs at least 3 classes; got n_classes={n_classes}, "
                         f"K={splits.num_classes}.")
    frames = over_checkpoints(checkpoints, partial(_frame, cfg, splits=splits, device=device, shown=shown,
                                                   per_class=per_class))
    for previous, frame in zip(frames, frames[1:], strict=False):
        R = align(frame["means"], previous["means"])                     # (2, 2)
        frame["means"], frame["samples"] = frame["means"] @ R, frame["samples"] @ R
    return frames


# ------------------------------------------------------------------------- notebook 04: NC5 and NECO
def nc5_at(cfg: Config, path: Path, splits: Splits, ood_sets: dict[str, ImageSet], device: torch.device,
           neco_options: dict[str, Any] | None = None) -> list[Row]:
    """NC5 (uncentred and centred) and NECO's detection metrics for every OOD set at one checkpoint.

    NC5 from the ID training features (book, chapter "Neural collapse", eqs. eq-nc5 and eq-nc5-centred;
    Ben Ammar et al., ICLR 2024). NECO (book, chapter "OOD scores", eq. eq-neco-maxlogit) is fitted on the
    training features of the same checkpoint and scored on the ID test set against each OOD set
    (:func:`helpers.protocol.evaluate_scores`). One row per OOD set: ``ood_set``, ``nc5``, ``nc5_centred``,
    ``auroc``, ``fpr95``.
    """
    f = features.at_checkpoint(cfg, path, splits, _with_ood(splits, ood_sets), device)
    train, oods = f["id:train"], {name: f[f"ood:{name}"] for name in ood_sets}
    W, b = classifier(path)
    det = protocol.evaluate_scores(train, W, b, f["id:test"], oods, {"neco": neco_options or {}}, n_boot=0)["neco"]
    return [{"ood_set": name, "nc5": collapse.nc5(train.features, train.labels, o.features),
             "nc5_centred": collapse.nc5_centred(train.features, train.labels, o.features),
             "auroc": det[name]["auroc"], "fpr95": det[name]["fpr95"]} for name, o in oods.items()]


def nc5_over_training(cfg: Config, checkpoints: dict[int, Path], splits: Splits, ood_sets: dict[str, ImageSet],
                      device: torch.device, neco_options: dict[str, Any] | None = None) -> list[Row]:
    """Rows of :func:`nc5_at` for every checkpoint (epoch order), each with its ``epoch``: one row per
    (checkpoint, OOD set)."""
    if not ood_sets:
        raise ValueError("ood_sets is empty; pass data.ood_sets(cfg) or at least one OOD ImageSet.")
    return over_checkpoints(checkpoints, partial(nc5_at, cfg, splits=splits, ood_sets=ood_sets, device=device,
                                                 neco_options=neco_options))


def nc5_correlations(rows: list[Row], score: str = "auroc") -> dict[str, dict[str, float]]:
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
                    rho, p = spearman(x, y)
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
    train, K = f["id:train"], splits.num_classes
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
    h = as_tensor(f["id:train"].features)                                # (N, D)
    means = class_means(h, f["id:train"].labels.long(), splits.num_classes)  # (K, D)
    mu_g = h.mean(0)                                                     # (D,)
    V = pca_basis(means - mu_g, n_components)                            # (D, k)

    def project(x: Tensor) -> np.ndarray:
        return ((_subset_rows(as_tensor(x), per_set, cfg.seed) - mu_g) @ V).numpy()

    return {"means": ((means - mu_g) @ V).numpy(), "id": project(f["id:test"].features),
            "ood": {name: project(f[f"ood:{name}"].features) for name in ood_sets}}


# --------------------------------------------------------------------- notebook 05: earlier layers
Batches = Callable[[ImageSet], Iterator[tuple[list[Tensor], Tensor]]]


@torch.no_grad()
def pooled_batches(model: ResNet18, ds: ImageSet, splits: Splits, device: torch.device,
                   batch_size: int = 512) -> Iterator[tuple[list[Tensor], Tensor]]:
    """The pooled outputs of the 8 residual blocks, one batch at a time: ([(B, C_l)] * 8, labels (B,)).

    The same pass as :func:`helpers.features.extract` (eval mode, float32 on the CPU): block 8 is the
    penultimate feature h; blocks 1-7 are rounded to float16, as the feature cache has always stored them,
    so the layer metrics keep their values. Nothing of a batch is kept after it is consumed.
    """
    model.eval()
    for start in range(0, len(ds), batch_size):
        x = data.normalize(ds.images[start:start + batch_size].to(device), splits.mean, splits.std)
        fmap, pooled = model.body(x, True)
        h = fmap.float().mean((2, 3))                                    # (B, D)
        yield [p.half().float().cpu() for p in pooled[:-1]] + [h.cpu()], ds.labels[start:start + batch_size]


def block_stats(batches: Iterator[tuple[list[Tensor], Tensor]], K: int) -> list[ClassStats]:
    """One :class:`helpers.stats.ClassStats` per block, updated batch by batch (memory independent of N)."""
    stats: list[ClassStats] = []
    for blocks, y in batches:
        stats = stats or [ClassStats.empty(K, b.shape[1]) for b in blocks]
        for s, b in zip(stats, blocks, strict=True):
            s.update(b, y)
    return stats


def stashed(batches: Iterator[tuple[list[Tensor], Tensor]], folder: Path) -> Iterator[tuple[list[Tensor], Tensor]]:
    """``batches`` passed through unchanged, each also saved in ``folder`` (blocks 1-7 as float16, the values
    they already have; h as float32), so that :func:`replayed` can read the same pass again without the network.
    Memory holds one batch; the disk holds the pass (55 MB for 45,000 images at width 16). A full disk stops
    with the one-line message of :func:`helpers.artifacts.atomic_write`."""
    for i, (blocks, y) in enumerate(batches):
        write_torch(([b.half() for b in blocks[:-1]], blocks[-1], y), folder / f"{i:07d}.pt")
        yield blocks, y


def replayed(folder: Path) -> Iterator[tuple[list[Tensor], Tensor]]:
    """The batches :func:`stashed` saved in ``folder``, in their order, as float32 again."""
    for path in sorted(folder.glob("*.pt")):
        low, h, y = torch.load(path, weights_only=True)
        yield [b.float() for b in low] + [h], y


def ncc_accuracy(batches: Iterator[tuple[list[Tensor], Tensor]], means: list[Tensor]) -> list[float]:
    """Nearest-class-mean accuracy per block (:func:`helpers.collapse.ncc_predict`), batch by batch."""
    hits, n = torch.zeros(len(means), dtype=torch.float64), 0
    for blocks, y in batches:
        hits += torch.tensor([float((collapse.ncc_predict(b, m) == y).sum()) for b, m in zip(blocks, means,
                                                                                               strict=True)])
        n += len(y)
    return (hits / n).tolist()


def _layer_row(block: int, stats: ClassStats, ncc_train: float, ncc_test: float) -> Row:
    K, C = stats.sums.shape
    nc = collapse.nc_metrics_from_stats(stats)
    return ({"block": block, "channels": C, "low_rank": C < K - 1} | {k: nc[k] for k in LAYER_KEYS}
            | {"nc1_per_direction": nc["nc1"] * K / min(K - 1, C), "ncc_train": ncc_train, "ncc_test": ncc_test})


def layers_at(cfg: Config, path: Path, splits: Splits, device: torch.device) -> list[Row]:
    """NC1, CDNV, NC2 and NCC accuracy (train and test) of the pooled output of each of the 8 residual blocks.

    Streaming statistics (:func:`block_stats`, :func:`helpers.collapse.nc_metrics_from_stats`; book, chapter
    "Neural collapse", sections on earlier layers and streaming statistics, eqs. eq-nc1, eq-nc2-equiangular,
    eq-nc4): one network pass over the training set for the statistics, its block outputs kept on disk batch by
    batch (:func:`stashed`, in the system's temporary folder) and read again for the NCC with that block's
    training class means, and one pass over
    the test set for the test NCC. Block 8 is the penultimate layer h. One row per block:
    ``block`` (1..8), ``channels`` C_l, ``low_rank`` (C_l < K-1: Sigma_B then has rank at most C_l, and NC1
    only sees that subspace), the keys of ``LAYER_KEYS``, ``nc1_per_direction``, ``ncc_train``, ``ncc_test``.

    NC1 sums one signal-to-noise term per between-class direction and divides by K, so a layer with
    C_l < K-1 channels has fewer terms and a smaller NC1 for the same per-direction ratio.
    ``nc1_per_direction`` = NC1 K / min(K-1, C_l) averages over the directions instead and can be compared
    across layers of different width; CDNV (eq. eq-cdnv) needs no inverse and is comparable as well.
    The rows are cached with the features (:func:`helpers.features.cached_measurement`): a warm run skips the
    network.
    """
    def measure() -> list[Row]:
        model = train.load_model(path, cfg, splits.num_classes, device)
        batches = partial(pooled_batches, model, splits=splits, device=device, batch_size=eval_batch(cfg, device))
        with tempfile.TemporaryDirectory(prefix="oodnc-layers-") as tmp:     # local even with artifacts on Drive
            stats = block_stats(stashed(batches(splits.train), Path(tmp)), splits.num_classes)
            means = [s.means() for s in stats]                           # (K, C_l) each
            on_train = ncc_accuracy(replayed(Path(tmp)), means)
        on_test = ncc_accuracy(batches(splits.test), means)
        return [_layer_row(i, *args) for i, args in enumerate(zip(stats, on_train, on_test, strict=True), start=1)]

    cache = features.measurement_path(RunPaths.of(cfg).features, path, "layers", [splits.train, splits.test],
                                      splits.mean, splits.std, f"batch {eval_batch(cfg, device)}|{device.type}")
    return features.cached_measurement(cache, measure)


def layers_over_training(cfg: Config, checkpoints: dict[int, Path], splits: Splits,
                         device: torch.device) -> list[Row]:
    """Rows of :func:`layers_at` for every checkpoint (epoch order), each with its ``epoch``: 8 rows per
    checkpoint."""
    return over_checkpoints(checkpoints, partial(layers_at, cfg, splits=splits, device=device))


def decay_epoch_by_layer(rows: list[Row], key: str = "cdnv", fraction: float = 0.5) -> dict[int, int | None]:
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
