"""The OOD evaluation protocol on cached features: fit every score on ID training data, choose KNN's k on
held-out data, score every set, summarise; plus the ID-vs-ID check and the NECO sensitivity sweep.

Pure functions of :class:`helpers.features.Features` (anything with ``.features`` h (N, D), ``.logits``
z (N, K) and ``.labels`` (N,)) and the last layer W (K, D), b (K,); nothing here calls the model, so notebook 02
(features from the run's checkpoints) and ``python -m helpers.evaluate`` (features from a snapshot's weights)
go through the same :func:`detect`. Scores come from ``helpers.ood.SCORES`` (**higher = more
in-distribution**), metrics from ``helpers.metrics``. Protocol: the book, chapter "OOD scores", section
"How hyper-parameters are fixed"; metrics: chapter "Metrics".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from . import metrics, ood
from .stats import ArrayLike, as_tensor

ID_TEST = "ID test"                             # the name of the ID test set among the scored sets
KNN_K = (1, 5, 10, 20, 50, 100, 200)            # candidate k of KNN, chosen on validation data
# Near-OOD sets per ID set, as OpenOOD v1.5 groups them (the other CIFAR and Tiny ImageNet); every other OOD
# set of a run is far-OOD (MNIST, SVHN, Textures, Places365, and the labelled extras such as Fashion-MNIST).
NEAR_OOD = {"cifar100": ("cifar10", "tinyimagenet"), "cifar10": ("cifar100", "tinyimagenet"),
            "synthetic": ("synthetic-near",)}


class FeatureSet(Protocol):
    """What the functions here read from a :class:`helpers.features.Features`."""

    features: Tensor    # (N, D)
    logits: Tensor      # (N, K)
    labels: Tensor      # (N,)


Raw = dict[str, dict[str, np.ndarray]]                       # {score: {set: (N_set,) scores}}
Results = dict[str, dict[str, dict[str, float]]]             # {score: {set: metrics.summary}}
Replicates = dict[str, dict[str, dict[str, np.ndarray]]]     # {score: {set: {metric: (n_boot,) replicates}}}


def _check_sets(sets: dict[str, Any], what: str) -> None:
    if not sets:
        raise ValueError(f"{what} is empty; pass at least one named set.")


# ------------------------------------------------------------------------------------- fit and score
def default_options(D: int) -> dict[str, dict[str, Any]]:
    """Options of every score of ``ood.SCORES``, in its order: the classes' defaults plus the book's rules
    (ViM's d by its class's rule from D and K, NECO at 90 % explained variance, ReAct/ASH at the 90th
    percentile). ``D`` is kept in the signature for rules that depend on the feature size."""
    rules = dict(neco={"explained_variance": 0.9},
                 react={"percentile": 90}, ash={"percentile": 90}, energy={"temperature": 1.0}, gen={"gamma": 0.1})
    return {name: rules.get(name, {}) for name in ood.SCORES}


def fit_score(name: str, options: dict[str, Any], train: FeatureSet, fc_weight: ArrayLike,
              fc_bias: ArrayLike) -> ood.OODScore:
    """``ood.make_score(name, **options)`` fitted on the ID training features, logits and labels."""
    return ood.make_score(name, **options).fit(train.features, train.logits, train.labels, fc_weight, fc_bias)


def compute_scores(train: FeatureSet, fc_weight: ArrayLike, fc_bias: ArrayLike, sets: dict[str, FeatureSet],
                   scores: dict[str, dict[str, Any]]) -> tuple[Raw, dict[str, ood.OODScore]]:
    """Fit every score once on ``train`` and score every set: ({score: {set: (N_set,)}}, {score: fitted}).

    Args:
        train: ID training features (no augmentation), h (N, D), z (N, K), y (N,).
        fc_weight, fc_bias: last layer W (K, D), b (K,).
        sets: named sets to score, e.g. {"ID test": ..., "svhn": ...}.
        scores: {name in ``ood.SCORES``: options for ``ood.make_score``}.
    """
    _check_sets(sets, "sets")
    _check_sets(scores, "scores")
    fitted = {name: fit_score(name, options, train, fc_weight, fc_bias) for name, options in scores.items()}
    raw = {name: {s: f.score(x.features, x.logits) for s, x in sets.items()} for name, f in fitted.items()}
    return raw, fitted


def summarise(raw: Raw, id_name: str, n_boot: int = metrics.N_BOOT, seed: int = 0) -> Results:
    """``metrics.summary`` of ID set ``id_name`` against every other set, per score: {score: {set: summary}}.

    AUROC and FPR95 are derived in the book, chapter "Metrics" (eq. eq-auroc, eq-fpr95).
    """
    return summarise_with_replicates(raw, id_name, n_boot, seed)[0]


def summarise_with_replicates(raw: Raw, id_name: str, n_boot: int = metrics.N_BOOT, seed: int = 0,
                              level: float = 0.95) -> tuple[Results, Replicates]:
    """:func:`summarise` and the bootstrap replicates behind its intervals, {score: {set: {metric: (n_boot,)}}},
    from one bootstrap per pair (empty without a bootstrap, ``n_boot=0``); :func:`group_means` reads them."""
    results: Results = {}
    replicates: Replicates = {}
    for name, per_set in raw.items():
        if id_name not in per_set:
            raise ValueError(f"ID set {id_name!r} is not among the scored sets {sorted(per_set)}; score it too.")
        results[name], replicates[name] = {}, {}
        for s, v in per_set.items():
            if s == id_name:
                continue
            reps = metrics.bootstrap_replicates(per_set[id_name], v, n_boot, seed) if n_boot else {}
            results[name][s] = metrics.summary_of(per_set[id_name], v, reps, level)
            replicates[name][s] = reps
    return results, replicates


def evaluate_scores(train: FeatureSet, fc_weight: ArrayLike, fc_bias: ArrayLike, id_test: FeatureSet,
                    ood_sets: dict[str, FeatureSet], scores: dict[str, dict[str, Any]], n_boot: int = metrics.N_BOOT,
                    seed: int = 0) -> Results:
    """Every score fitted on ``train``, ID test vs each OOD set: {score: {ood_set: metrics.summary}}."""
    _check_sets(ood_sets, "ood_sets")
    id_name = "__id_test__"
    if id_name in ood_sets:
        raise ValueError(f"an OOD set is named {id_name!r}, which is reserved; rename it.")
    raw, _ = compute_scores(train, fc_weight, fc_bias, {id_name: id_test, **ood_sets}, scores)
    return summarise(raw, id_name, n_boot=n_boot, seed=seed)


def select_option(name: str, param: str, values: list[Any], train: FeatureSet, fc_weight: ArrayLike,
                  fc_bias: ArrayLike, id_val: FeatureSet, ood_val: FeatureSet,
                  base: dict[str, Any] | None = None) -> tuple[Any, list[float]]:
    """Choose ``param`` of score ``name`` among ``values`` by AUROC of ID validation vs the validation OOD set.

    Only held-out data enter: ``id_val`` is the ID validation split and ``ood_val`` the validation OOD set,
    never a test set (the book, chapter "OOD scores", section "How hyper-parameters are fixed").
    Ties go to the earliest value in ``values``. Returns (chosen value, AUROC per value).
    """
    if not values:
        raise ValueError(f"values is empty; pass the candidate values of {param!r}.")
    aurocs = []
    for v in values:
        s = fit_score(name, {**(base or {}), param: v}, train, fc_weight, fc_bias)
        aurocs.append(metrics.ood_metrics(s.score(id_val.features, id_val.logits),
                                          s.score(ood_val.features, ood_val.logits))["auroc"])
    return values[int(np.argmax(aurocs))], aurocs


# ------------------------------------------------------------------------------ the whole protocol
@dataclass
class Detection:
    """What :func:`detect` returns: options as used, KNN's selection, raw scores, fitted scores, summaries."""

    options: dict[str, dict[str, Any]]
    selection: dict[str, Any]
    raw: Raw
    fitted: dict[str, ood.OODScore]
    results: Results
    replicates: Replicates                     # behind the results' intervals; group_means reads them

    @property
    def used(self) -> dict[str, dict[str, Any]]:
        return fitted_params(self.fitted)


def detect(feats: dict[str, FeatureSet], fc_weight: ArrayLike, fc_bias: ArrayLike, ood_names: list[str],
           val_ood: str, n_boot: int = metrics.N_BOOT, seed: int = 0) -> Detection:
    """The protocol of notebook 02 and ``python -m helpers.evaluate``: every score of ``ood.SCORES``.

    ``feats`` holds ``"train"``, ``"val"`` and ``"test"`` (the ID splits), every name of ``ood_names`` and
    ``val_ood``. Scores use :func:`default_options`; KNN's k is chosen among :data:`KNN_K` by
    :func:`select_option` on ID validation vs ``val_ood``; each score is then fitted on ``"train"`` and
    ``"test"`` (as :data:`ID_TEST`) is summarised against each OOD set.
    """
    train = feats["train"]
    options = default_options(int(as_tensor(train.features).shape[1]))
    values = [k for k in KNN_K if k <= len(train.labels)]
    chosen, aurocs = select_option("knn", "k", values, train, fc_weight, fc_bias, feats["val"], feats[val_ood])
    options["knn"] = {"k": chosen}
    selection = dict(score="knn", param="k", values=values, val_auroc=aurocs, chosen=chosen, id_set="val",
                     ood_set=val_ood)
    sets = {ID_TEST: feats["test"], **{n: feats[n] for n in ood_names}}
    raw, fitted = compute_scores(train, fc_weight, fc_bias, sets, options)
    return Detection(options, selection, raw, fitted, *summarise_with_replicates(raw, ID_TEST, n_boot, seed))


def by_set(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    """{score: {set: m}} → {set: {score: m}}, sets and scores in their first order."""
    sets = dict.fromkeys(s for per_set in results.values() for s in per_set)
    return {s: {name: per_set[s] for name, per_set in results.items() if s in per_set} for s in sets}


# ------------------------------------------------------------------------------------ ID-vs-ID check
def split_halves(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded random split of range(n) into two sorted halves A (floor(n/2)) and B (the rest)."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to split in halves; got {n}.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))   # (n,)
    return order[: n // 2].sort().values, order[n // 2:].sort().values


def auroc_null_sd(n_a: int, n_b: int) -> float:
    """Standard deviation of the AUROC when both samples come from one distribution (no ties).

    The Mann-Whitney statistic U = n_a n_b AUROC has variance n_a n_b (n_a + n_b + 1) / 12 under the null,
    so sd(AUROC) = sqrt((n_a + n_b + 1) / (12 n_a n_b)); see the book, chapter "Metrics" (eq. eq-auroc).
    """
    if n_a < 1 or n_b < 1:
        raise ValueError(f"both halves need at least one sample; got {n_a} and {n_b}.")
    return math.sqrt((n_a + n_b + 1) / (12 * n_a * n_b))


def id_vs_id(id_scores: dict[str, ArrayLike], n_boot: int = metrics.N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Sanity check: ID test scores split in two seeded halves, half A as "ID" and half B as "OOD".

    The halves are exchangeable, so every score should give AUROC = 0.5 up to sampling noise of about
    ``auroc_null_sd(n_a, n_b)`` and FPR95 near 0.95 (eq. eq-auroc, eq-fpr95 in the book's chapter "Metrics").
    Because the scores are fitted on the training set, scoring the halves is the same as indexing the
    scores of the whole ID test set.

    Args:
        id_scores: {score: scores of the whole ID test set, (N,)}, all of the same length.
    Returns:
        {"n_a", "n_b", "null_sd", "scores": {score: metrics.summary}}.
    """
    _check_sets(id_scores, "id_scores")
    arrays = {k: as_tensor(v, name=f"scores of {k}").numpy() for k, v in id_scores.items()}
    sizes = {v.shape for v in arrays.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(f"id_scores must be 1-D arrays of one length (the ID test set); got shapes {sorted(sizes)}.")
    a, b = (i.numpy() for i in split_halves(next(iter(sizes))[0], seed))
    return {"n_a": len(a), "n_b": len(b), "null_sd": auroc_null_sd(len(a), len(b)),
            "scores": {k: metrics.summary(v[a], v[b], n_boot=n_boot, seed=seed) for k, v in arrays.items()}}


# ------------------------------------------------------------------------------------- NECO's d
def sweep_dims(D: int, n: int = 24) -> list[int]:
    """About ``n`` log-spaced integer dimensions from 1 to D (both included), increasing."""
    if D < 1 or n < 1:
        raise ValueError(f"D and n must be >= 1; got D={D}, n={n}.")
    return sorted({int(round(d)) for d in np.geomspace(1, D, n)} | {D})


def neco_all_dims(neco: ood.NECO, features: ArrayLike, logits: ArrayLike, dims: list[int]) -> np.ndarray:
    """NECO scores for several d at once from one fitted ``NECO(dim=D)``: (N, len(dims)).

    With h~ = (h - mu_G) / s and principal coordinates c = V^T h~ (all D components, descending variance),
    ||P_d^T h~||^2 is the cumulative sum of c_j^2 over the first d coordinates, so every d costs one cumsum
    (the book, chapter "OOD scores", eq. eq-neco and eq. eq-neco-maxlogit when ``neco.maxlogit``).
    """
    if not hasattr(neco, "components_") or neco.components_.shape[0] != neco.components_.shape[1]:
        raise ValueError("pass a NECO fitted with dim equal to the feature size D, so that all components exist.")
    D = neco.components_.shape[1]
    if not dims or min(dims) < 1 or max(dims) > D:
        raise ValueError(f"dims must lie in [1, {D}]; got {dims!r}.")
    h, z = as_tensor(features).cpu(), as_tensor(logits, name="logits").cpu()
    if h.ndim != 2 or h.shape[1] != D or z.ndim != 2 or z.shape[0] != h.shape[0]:
        raise ValueError(f"expected features (N, {D}) and logits (N, K); got {tuple(h.shape)} and {tuple(z.shape)}.")
    x = (h - neco.mean_) / neco.scale_                                    # (N, D) h~
    kept = (x @ neco.components_.T).pow(2).cumsum(dim=1).sqrt()           # (N, D) ||P_d h~|| for d = 1..D
    ratio = kept[:, [d - 1 for d in dims]] / x.norm(dim=1, keepdim=True).clamp_min(1e-300)  # (N, len(dims))
    return (ratio * z.max(dim=1, keepdim=True).values if neco.maxlogit else ratio).numpy()


def neco_sweep(train: FeatureSet, fc_weight: ArrayLike, fc_bias: ArrayLike, id_test: FeatureSet,
               sets: dict[str, FeatureSet], dims: list[int] | None = None, **options: Any) -> dict[str, Any]:
    """AUROC of NECO against the number d of principal components, per set; a sensitivity curve, not a selection.

    Args:
        sets: named OOD sets scored against ``id_test``.
        dims: values of d; ``None`` uses ``sweep_dims(D)``.
        options: further NECO options (``standardize``, ``maxlogit``); ``dim`` is set by the sweep.
    Returns:
        {"dims": [d], "explained_variance": cumulative explained variance at each d, "chosen_dim": d of the
        rule ``explained_variance`` (default 90 %), "auroc": {set: [AUROC at each d]}}.
    """
    _check_sets(sets, "sets")
    D = int(as_tensor(train.features).shape[1])
    rule = fit_score("neco", options, train, fc_weight, fc_bias)          # d by the explained-variance rule
    full = fit_score("neco", {**options, "dim": D}, train, fc_weight, fc_bias)
    dims = sweep_dims(D) if dims is None else sorted(dims)
    s_id = neco_all_dims(full, id_test.features, id_test.logits, dims)    # (N_id, len(dims))
    auroc = {}
    for name, f in sets.items():
        s_ood = neco_all_dims(full, f.features, f.logits, dims)          # (N_ood, len(dims))
        auroc[name] = [metrics.ood_metrics(s_id[:, j], s_ood[:, j])["auroc"] for j in range(len(dims))]
    return {"dims": dims, "explained_variance": [float(full.explained_variance_ratio_[d - 1]) for d in dims],
            "chosen_dim": int(rule.dim_), "auroc": auroc}


# ------------------------------------------------------------------------------------------ tables
def fitted_params(fitted: dict[str, ood.OODScore]) -> dict[str, dict[str, Any]]:
    """Hyper-parameters of fitted scores as used: ``get_params()`` plus resolved values (``dim_``, ``M_``)."""
    resolved = {"dim_": "dim", "M_": "M"}
    return {name: {**s.get_params(), **{p: getattr(s, a) for a, p in resolved.items() if hasattr(s, a)}}
            for name, s in fitted.items()}


def average(results: Results, keys: tuple[str, ...] = ("auroc", "fpr95")) -> dict[str, dict[str, float]]:
    """Mean over OOD sets of each metric in ``keys``, per score: {score: {metric: mean}}."""
    return {name: {k: float(np.mean([m[k] for m in per_set.values()])) for k in keys}
            for name, per_set in results.items()}


def ood_groups(id_set: str, ood_sets: list[str]) -> dict[str, tuple[str, ...]]:
    """OpenOOD v1.5's grouping of ``ood_sets`` for ID set ``id_set``: {"near": (...), "far": (...)}.

    Near are the sets of :data:`NEAR_OOD` for this ID set, far all others; an ID set without an entry (an
    image folder) has no groups, ``{}``.
    """
    if id_set not in NEAR_OOD:
        return {}
    near = tuple(s for s in ood_sets if s in NEAR_OOD[id_set])
    return {"near": near, "far": tuple(s for s in ood_sets if s not in near)}


def group_means(results: Results, groups: dict[str, tuple[str, ...]],
                keys: tuple[str, ...] = ("auroc", "fpr95", "aupr_in", "aupr_out"),
                replicates: Replicates | None = None, level: float = 0.95) -> dict[str, Any]:
    """Per group of OOD sets (near, far): its sets and the mean of each metric over them, per score.

    {group: {"sets": [...], "mean": {score: {metric: mean}}}}; empty groups are left out. With the
    ``replicates`` of :func:`summarise_with_replicates`, each mean gets its percentile interval
    (``<metric>_low``, ``<metric>_high``): replicate r of the group mean is the mean of replicate r of its sets.
    The sets share the ID test set, and ``metrics.resample_indices`` draws its ID indices from their own
    seeded stream, so replicate r resamples the ID scores alike for every set: the group mean is bootstrapped
    as one statistic of the ID scores and the group's OOD scores.
    """
    out = {g: {"sets": list(sets), "mean": average(
        {s: {o: m for o, m in per_set.items() if o in sets} for s, per_set in results.items()}, keys)}
        for g, sets in groups.items() if sets}
    for entry in out.values():
        for score, m in entry["mean"].items():
            reps = [(replicates or {}).get(score, {}).get(o) for o in entry["sets"]]
            if all(reps):
                for key in keys:
                    low, high = metrics.percentile_interval(np.mean([r[key] for r in reps], axis=0), level)
                    m[metrics.low_key(key)], m[metrics.high_key(key)] = low, high
    return out


def interval(m: dict[str, float], metric: str = "auroc") -> str:
    """Point estimate and bootstrap interval in percent: "71.2 [68.0, 74.1]"."""
    return f"{100 * m[metric]:.1f} [{100 * m[f'{metric}_low']:.1f}, {100 * m[f'{metric}_high']:.1f}]"


def interval_table(results: Results, metric: str = "auroc") -> pd.DataFrame:
    """:func:`interval` of ``metric`` for every score (rows) and set (columns).

    Needs summaries with ``<metric>_low`` and ``<metric>_high`` (``metrics.summary`` with ``n_boot`` > 0).
    """
    return pd.DataFrame({name: {s: interval(m, metric) for s, m in per_set.items()}
                         for name, per_set in results.items()}).T
