"""Detection metrics for OOD scores: AUROC, FPR at 95 % TPR, AUPR, bootstrap intervals and tables.

Scores follow the book's convention of ``helpers.ood``: **higher = more in-distribution (ID)**.
Metrics with OOD as the positive class use the outlier score -s; that negation happens in exactly
one place, ``_outlier_score``. Formulas are derived in the book, chapter "Metrics".

Metric names are the constants below (``AUROC``, ``FPR95``, ...); ``METRICS`` lists them in the order of
``ood_metrics`` and ``summary``. Bootstrap bounds are stored under ``low_key(name)`` and ``high_key(name)``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import torch

AUROC = "auroc"
FPR95 = "fpr95"                                 # ID positive (ViM and NECO papers)
FPR95_OOD_POSITIVE = "fpr95_ood_positive"       # OOD positive (OpenOOD, pytorch-ood)
AUPR_IN = "aupr_in"
AUPR_OUT = "aupr_out"
METRICS = (AUROC, FPR95, FPR95_OOD_POSITIVE, AUPR_IN, AUPR_OUT)

TPR_LEVEL = 0.95
N_BOOT = 1000               # default number of bootstrap replicates
_TOL = 1e-12                # TPR >= 0.95 is tested as TPR >= 0.95 - _TOL, against rounding in k / n
_BLOCK_ELEMENTS = 160_000   # bootstrap draws per block (b x (N_id + N_ood)), at least _MIN_BLOCK replicates:
_MIN_BLOCK = 4              # 8 replicates of 10,000 + 10,000 ran 1.7x faster than 13 (benchmarks/README.md)
_WORKERS = 2                # threads evaluating blocks of bootstrap replicates (the numbers do not depend on it)

_T = TypeVar("_T")
_R = TypeVar("_R")


def low_key(name: str) -> str:
    """Key of the lower bootstrap bound of metric ``name`` in ``summary``: "<name>_low"."""
    return f"{name}_low"


def high_key(name: str) -> str:
    """Key of the upper bootstrap bound of metric ``name`` in ``summary``: "<name>_high"."""
    return f"{name}_high"


def _as_scores(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Return ``x`` as a non-empty finite 1-D float64 array; raise a one-line ValueError otherwise."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per sample); got shape {a.shape}.")
    if a.size == 0:
        raise ValueError(f"{name} is empty; pass at least one score.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contain {int((~np.isfinite(a)).sum())} NaN or inf values; scores must be finite.")
    return a


def _outlier_score(s: np.ndarray) -> np.ndarray:
    """The one sign flip: ID scores (higher = ID) to outlier scores (higher = OOD)."""
    return -s


def n_kept(n: int) -> int:
    """Number of positives a 95 %-TPR threshold keeps: ceil(0.95 n) (the ViM/NECO code keeps floor(0.95 n))."""
    return int(np.ceil(n * (TPR_LEVEL - _TOL)))


def _fpr_at_tpr(labels: np.ndarray, scores: np.ndarray) -> float:
    """FPR at the first ROC threshold (from the top) whose TPR reaches 0.95; positives have ``labels`` 1.

    With ``drop_intermediate=False`` every distinct score is a threshold, so this is the largest threshold
    t with #(positives >= t) >= 0.95 n_pos, i.e. the ceil(0.95 n_pos)-th largest positive score, and the
    FPR counts negatives with score >= t.
    """
    from sklearn.metrics import roc_curve  # imported on first use: scikit-learn takes a second to load

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= TPR_LEVEL - _TOL)])


def ood_metrics(id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor) -> dict[str, float]:
    """AUROC, FPR95 in both conventions, AUPR-In and AUPR-Out of ID vs OOD scores (higher = ID).

    Derived in the book, chapter "Metrics" (eq. eq-auroc, eq-fpr95, eq-aupr). With n ID scores s and
    m OOD scores t:

    - ``auroc``: P(s_ID > s_OOD) + P(tie) / 2, the same for either positive class.
    - ``fpr95`` (ID positive, ViM and NECO papers): #{j: t_j >= tau} / m with tau the ceil(0.95 n)-th
      largest ID score.
    - ``fpr95_ood_positive`` (OOD positive, OpenOOD, pytorch-ood): #{i: s_i <= tau'} / n with tau' the
      ceil(0.95 m)-th smallest OOD score (the ceil(0.95 m)-th largest outlier score -t).
    - ``aupr_in``: average precision with ID positive and score s; ``aupr_out``: OOD positive, score -s.

    The ViM/NECO benchmark code takes the floor(0.95 n)-th largest ID score instead; the two agree when
    0.95 n is an integer. AUPR is scikit-learn's step-wise average precision, not a trapezoid.

    Args:
        id_scores: scores of ID test samples, (N_id,).
        ood_scores: scores of OOD samples, (N_ood,).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score  # on first use (a second to load)

    s_id, s_ood = _as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores")
    s = np.concatenate([s_id, s_ood])                                        # (N_id + N_ood,)
    is_id = np.concatenate([np.ones(s_id.size), np.zeros(s_ood.size)])     # ID positive
    is_ood, outlier = 1 - is_id, _outlier_score(s)                           # OOD positive
    return {
        AUROC: float(roc_auc_score(is_id, s)),
        FPR95: _fpr_at_tpr(is_id, s),
        FPR95_OOD_POSITIVE: _fpr_at_tpr(is_ood, outlier),
        AUPR_IN: float(average_precision_score(is_id, s)),
        AUPR_OUT: float(average_precision_score(is_ood, outlier)),
    }


@dataclass(frozen=True)
class SortedScores:
    """Both samples sorted once: distinct values v (ID) and w (OOD), each sample's index into them, and
    where each set's distinct values fall in the other's (``np.searchsorted``)."""

    g_id: np.ndarray        # (N_id,) index of each ID score in v
    g_ood: np.ndarray       # (N_ood,) index of each OOD score in w
    n_v: int
    n_w: int
    w_lt_v: np.ndarray      # (n_v,) #{w < v_u}
    v_le_w: np.ndarray      # (n_w,) #{v <= w_u}
    tie_v: np.ndarray       # indices u of v with v_u in w
    tie_w: np.ndarray       # the matching indices of w

    @classmethod
    def of(cls, s_id: np.ndarray, s_ood: np.ndarray) -> SortedScores:
        v, g_id = np.unique(s_id, return_inverse=True)
        w, g_ood = np.unique(s_ood, return_inverse=True)
        w_le_v, w_lt_v = np.searchsorted(w, v, "right"), np.searchsorted(w, v, "left")
        tie_v = np.flatnonzero(w_le_v > w_lt_v)
        return cls(g_id.ravel(), g_ood.ravel(), v.size, w.size, w_lt_v, np.searchsorted(v, w, "right"),
                   tie_v, w_lt_v[tie_v])


def _counts(groups: np.ndarray, idx: np.ndarray, n_groups: int) -> np.ndarray:
    """Per row of ``idx`` (b, n), how often each distinct value is drawn: (b, n_groups) int64."""
    b = idx.shape[0]
    flat = groups[idx]                                                       # (b, n)
    flat += n_groups * np.arange(b)[:, None]
    return np.bincount(flat.ravel(), minlength=b * n_groups).reshape(b, n_groups)


def _cumsum0(x: np.ndarray) -> np.ndarray:
    """Row-wise cumulative sums with a leading 0 column, summed in int64 (exact and about 5x faster than
    float64 in numpy), returned as float64: (b, U) -> (b, U + 1)."""
    out = np.zeros((x.shape[0], x.shape[1] + 1), dtype=np.int64)
    np.cumsum(x, axis=1, out=out[:, 1:])
    return out.astype(np.float64)


def _first_at_least(rows: np.ndarray, target: int) -> np.ndarray:
    """Per row of a non-decreasing (b, U) matrix, the first column whose value is >= target: (b,)."""
    return np.array([np.searchsorted(r, target, "left") for r in rows])


def _row_dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise dot products of two (b, U) arrays: (b,)."""
    return np.einsum("ij,ij->i", x, y)


def _precision_sum(weights: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Row sums of weights * tp / (tp + fp), (b, U) -> (b,); a column with tp + fp = 0 has weight 0."""
    den = tp + fp
    np.maximum(den, 1, out=den)
    return _row_dot(weights, np.divide(tp, den, out=den))


def metrics_from_counts(a: np.ndarray, c: np.ndarray, p: SortedScores) -> dict[str, np.ndarray]:
    """All five metrics per row from counts a (b, n_v) of the ID values v and c (b, n_w) of the OOD values w.

    With A_u = #ID <= v_u, C(x) = #OOD <= x and C^-(x) = #OOD < x (row totals n, m):
    AUROC = sum_u a_u (C^-(v_u) + ties_u / 2) / (n m); FPR95 = (m - C^-(tau)) / m with tau = v_u, u the first
    index where A_u >= n - ceil(0.95 n) + 1 (the ceil(0.95 n)-th largest ID draw); FPR95 (OOD+) = #ID <= tau' / n,
    tau' = w_u' with u' the first index where C(w_u') >= ceil(0.95 m); AUPR-In = sum_u (a_u / n) TP_u / (TP_u + FP_u)
    with TP_u = n - A_{u-1}, FP_u = m - C^-(v_u); AUPR-Out = sum_u (c_u / m) C(w_u) / (C(w_u) + #ID <= w_u).
    """
    n, m = int(a[0].sum()), int(c[0].sum())
    A, C = _cumsum0(a), _cumsum0(c)                                          # (b, n_v + 1), (b, n_w + 1)
    af, cf = a.astype(np.float64), c.astype(np.float64)
    C_lt_v = C[:, p.w_lt_v]                                                  # (b, n_v) #OOD < v_u
    ties = _row_dot(af[:, p.tie_v], cf[:, p.tie_w])                          # (b,) sum_u a_u #OOD == v_u
    rows = np.arange(a.shape[0])
    u_id = _first_at_least(A[:, 1:], n - n_kept(n) + 1)                      # index of the ID threshold tau
    u_ood = _first_at_least(C[:, 1:], n_kept(m))                             # index of the OOD threshold tau'
    return {
        AUROC: (_row_dot(af, C_lt_v) + 0.5 * ties) / (n * m),
        FPR95: (m - C_lt_v[rows, u_id]) / m,
        FPR95_OOD_POSITIVE: A[rows, p.v_le_w[u_ood]] / n,
        AUPR_IN: _precision_sum(af, n - A[:, :-1], m - C_lt_v) / n,
        AUPR_OUT: _precision_sum(cf, C[:, 1:], A[:, p.v_le_w]) / m,
    }


def resample_indices(n_id: int, n_ood: int, n_boot: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Bootstrap draws in blocks of replicates: (b, n_id) ID indices and (b, n_ood) OOD indices.

    The one source of randomness of ``bootstrap``. ID and OOD indices come from two independent numpy
    Generators spawned from ``np.random.SeedSequence(seed)``, so replicate r is exactly the r-th call
    ``integers(0, n_id, n_id)`` of the first and ``integers(0, n_ood, n_ood)`` of the second: the same
    draws as a replicate-by-replicate loop, whatever the block size (about ``_BLOCK_ELEMENTS`` draws).
    """
    rng_id, rng_ood = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    block = max(_MIN_BLOCK, _BLOCK_ELEMENTS // (n_id + n_ood))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        yield rng_id.integers(0, n_id, size=(b, n_id)), rng_ood.integers(0, n_ood, size=(b, n_ood))


def _check_bootstrap(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1; got {n_boot!r}.")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level!r}.")


def _map_in_order(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, at most 2 * workers items pending.

    numpy releases the GIL in its array loops, so blocks of replicates run in parallel; ``items`` is consumed
    in order by the calling thread (the draws stay sequential), so the results do not depend on ``workers``.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def bootstrap_replicates(id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor,
                         n_boot: int = N_BOOT, seed: int = 0) -> dict[str, np.ndarray]:
    """Every metric of ``ood_metrics`` on ``n_boot`` bootstrap replicates: {name: (n_boot,)}.

    Sorts each sample once (``SortedScores``); each replicate is then a pair of count vectors over the distinct
    ID and OOD values (``_counts``), and ``metrics_from_counts`` evaluates all replicates of a block at
    once from integer cumulative sums. Draws come from ``resample_indices(n_id, n_ood, n_boot, seed)``;
    blocks are evaluated on ``_WORKERS`` threads, with the same numbers as one thread.
    """
    s_id, s_ood = _as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores")
    _check_bootstrap(n_boot, 0.5)
    p = SortedScores.of(s_id, s_ood)

    def block(idx: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        return metrics_from_counts(_counts(p.g_id, idx[0], p.n_v), _counts(p.g_ood, idx[1], p.n_w), p)

    parts = list(_map_in_order(block, resample_indices(s_id.size, s_ood.size, n_boot, seed), _WORKERS))
    return {name: np.concatenate([values[name] for values in parts]) for name in METRICS}


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval: the (1 - level)/2 and (1 + level)/2 quantiles of the replicates.

    Quantiles by numpy's default rule (linear interpolation between order statistics, Hyndman-Fan type 7).
    """
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap(id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor, n_boot: int = N_BOOT,
              seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every metric of ``ood_metrics``: {name: (low, high)}.

    ID and OOD scores are resampled separately with replacement (``resample_indices``, seeded by ``seed``);
    the interval is ``percentile_interval`` of the ``n_boot`` replicates at confidence ``level``.
    """
    _check_bootstrap(n_boot, level)
    reps = bootstrap_replicates(id_scores, ood_scores, n_boot=n_boot, seed=seed)
    return {name: percentile_interval(reps[name], level) for name in METRICS}


def summary(id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor, n_boot: int = N_BOOT,
            seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """``ood_metrics`` plus bootstrap bounds, flat: for each name of ``METRICS`` in order, name,
    ``low_key(name)``, ``high_key(name)``. ``n_boot=0`` skips the bootstrap (bounds NaN).
    """
    if n_boot:
        _check_bootstrap(n_boot, level)
    reps = bootstrap_replicates(id_scores, ood_scores, n_boot=n_boot, seed=seed) if n_boot else {}
    return summary_of(id_scores, ood_scores, reps, level)


def summary_of(id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor,
               replicates: dict[str, np.ndarray], level: float = 0.95) -> dict[str, float]:
    """:func:`summary` from replicates already drawn (``bootstrap_replicates``; empty: bounds NaN)."""
    point = ood_metrics(id_scores, ood_scores)
    out: dict[str, float] = {}
    for name in METRICS:
        low, high = percentile_interval(replicates[name], level) if replicates else (np.nan, np.nan)
        out[name], out[low_key(name)], out[high_key(name)] = point[name], low, high
    return {k: float(v) for k, v in out.items()}


def table(results: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """Table of {score: {ood_set: summary}}: rows are scores, columns (metric, OOD set) in percent.

    Metrics are AUROC and FPR95 (ID-positive ``fpr95``), times 100 and rounded to 2 decimals; the
    "average" column of each metric is the mean over OOD sets before rounding (NaN if a set is missing).
    """
    if not results:
        raise ValueError("results is empty; pass {score: {ood_set: summary}}.")
    sets = list(dict.fromkeys(name for per_set in results.values() for name in per_set))
    frames = {}
    for label, key in (("AUROC", AUROC), ("FPR95", FPR95)):
        values = pd.DataFrame({s: {o: results[s].get(o, {}).get(key, np.nan) for o in sets} for s in results}).T
        values = values[sets] * 100                                           # (scores, sets)
        values["average"] = values.mean(axis=1, skipna=False)
        frames[label] = values
    return pd.concat(frames, axis=1).round(2)
