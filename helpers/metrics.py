"""Detection metrics for OOD scores: AUROC, FPR at 95 % TPR, AUPR, bootstrap intervals and tables.

Scores follow the book's convention of ``helpers.ood``: **higher = more in-distribution (ID)**.
Metrics with OOD as the positive class use the outlier score -s; that negation happens in exactly
one place, ``_outlier_score``. Formulas are derived in the book, chapter "Metrics".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

TPR_LEVEL = 0.95
_TOL = 1e-12                # TPR >= 0.95 is tested as TPR >= 0.95 - _TOL, against rounding in k / n
_BLOCK_ELEMENTS = 2**22     # bootstrap replicates are processed in blocks of about this many scores


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


def _fpr_at_tpr(labels: np.ndarray, scores: np.ndarray) -> float:
    """FPR at the first ROC threshold (from the top) whose TPR reaches 0.95; positives have ``labels`` 1.

    With ``drop_intermediate=False`` every distinct score is a threshold, so this is the largest threshold
    t with #(positives >= t) >= 0.95 n_pos, and the FPR counts negatives with score >= t.
    """
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= TPR_LEVEL - _TOL)])


def ood_metrics(id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor) -> dict[str, float]:
    """AUROC, FPR95 in both conventions, AUPR-In and AUPR-Out of ID vs OOD scores (higher = ID).

    Derived in the book, chapter "Metrics" (eq. eq-auroc, eq-fpr95, eq-aupr).

    - ``auroc``: P(s_ID > s_OOD) + P(tie) / 2, the same for either positive class.
    - ``fpr95``: ID positive (ViM and NECO papers): the fraction of OOD samples accepted (s >= t) at
      the largest threshold t that keeps at least 95 % of ID samples.
    - ``fpr95_ood_positive``: OOD positive (OpenOOD, pytorch-ood): the fraction of ID samples flagged
      as OOD at the largest outlier-score threshold that flags at least 95 % of OOD samples.
    - ``aupr_in``: average precision with ID positive and score s; ``aupr_out``: OOD positive, score -s.

    Both FPR95 values take the first ROC point with TPR >= 0.95 (no interpolation between points). The
    ViM code keeps floor(0.95 n) ID samples instead; the two agree when 0.95 n is an integer. AUPR is
    scikit-learn's step-wise average precision, not a trapezoid over the PR curve.

    Args:
        id_scores: scores of ID test samples, (N_id,).
        ood_scores: scores of OOD samples, (N_ood,).
    """
    s_id, s_ood = _as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores")
    s = np.concatenate([s_id, s_ood])                                        # (N_id + N_ood,)
    is_id = np.concatenate([np.ones(s_id.size), np.zeros(s_ood.size)])     # ID positive
    is_ood, outlier = 1 - is_id, _outlier_score(s)                           # OOD positive
    return {
        "auroc": float(roc_auc_score(is_id, s)),
        "fpr95": _fpr_at_tpr(is_id, s),
        "fpr95_ood_positive": _fpr_at_tpr(is_ood, outlier),
        "aupr_in": float(average_precision_score(is_id, s)),
        "aupr_out": float(average_precision_score(is_ood, outlier)),
    }


def _auroc_rows(s_id: np.ndarray, s_ood: np.ndarray) -> np.ndarray:
    """AUROC per row by the Mann-Whitney rank sum (ties count 1/2): (B, N_id), (B, N_ood) -> (B,)."""
    n_id, n_ood = s_id.shape[1], s_ood.shape[1]
    ranks = rankdata(np.concatenate([s_id, s_ood], axis=1), axis=1)        # (B, N_id + N_ood)
    return (ranks[:, :n_id].sum(axis=1) - n_id * (n_id + 1) / 2) / (n_id * n_ood)


def _fpr95_rows(s_id: np.ndarray, s_ood: np.ndarray) -> np.ndarray:
    """ID-positive FPR95 per row, the rule of ``ood_metrics`` in closed form: (B, N_id), (B, N_ood) -> (B,).

    The threshold is the m-th largest ID score with m = ceil(0.95 N_id).
    """
    n_id = s_id.shape[1]
    m = int(np.ceil(n_id * (TPR_LEVEL - _TOL)))
    t = np.sort(s_id, axis=1)[:, n_id - m]                                  # (B,)
    return (s_ood >= t[:, None]).mean(axis=1)


def bootstrap(id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor, n_boot: int = 200,
              seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for ``auroc`` and ``fpr95`` (ID positive).

    ID and OOD scores are resampled separately with replacement (numpy Generator seeded by ``seed``);
    replicates are computed in vectorised blocks with the same rules as ``ood_metrics``.
    Returns {"auroc": (low, high), "fpr95": (low, high)} at confidence ``level``.
    """
    s_id, s_ood = _as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1; got {n_boot!r}.")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level!r}.")
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // (s_id.size + s_ood.size))
    auroc, fpr95 = [], []
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        r_id = s_id[rng.integers(0, s_id.size, size=(b, s_id.size))]       # (b, N_id)
        r_ood = s_ood[rng.integers(0, s_ood.size, size=(b, s_ood.size))]   # (b, N_ood)
        auroc.append(_auroc_rows(r_id, r_ood))
        fpr95.append(_fpr95_rows(r_id, r_ood))
    q = [(1 - level) / 2, (1 + level) / 2]
    return {name: tuple(float(v) for v in np.quantile(np.concatenate(reps), q))
            for name, reps in (("auroc", auroc), ("fpr95", fpr95))}


def summary(id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor, n_boot: int = 200,
            seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """``ood_metrics`` plus bootstrap bounds, flat: auroc, auroc_low, auroc_high, fpr95, fpr95_low,
    fpr95_high, fpr95_ood_positive, aupr_in, aupr_out. ``n_boot=0`` skips the bootstrap (bounds NaN).
    """
    out = ood_metrics(id_scores, ood_scores)
    if n_boot == 0:
        intervals = {"auroc": (np.nan, np.nan), "fpr95": (np.nan, np.nan)}
    else:
        intervals = bootstrap(id_scores, ood_scores, n_boot=n_boot, seed=seed, level=level)
    for name, (low, high) in intervals.items():
        out[f"{name}_low"], out[f"{name}_high"] = low, high
    order = ["auroc", "auroc_low", "auroc_high", "fpr95", "fpr95_low", "fpr95_high", "fpr95_ood_positive",
             "aupr_in", "aupr_out"]
    return {k: float(out[k]) for k in order}


def table(results: dict[str, dict[str, dict]]) -> pd.DataFrame:
    """Table of {score: {ood_set: summary}}: rows are scores, columns (metric, OOD set) in percent.

    Metrics are AUROC and FPR95 (ID-positive ``fpr95``), times 100 and rounded to 2 decimals; the
    "average" column of each metric is the mean over OOD sets before rounding (NaN if a set is missing).
    """
    if not results:
        raise ValueError("results is empty; pass {score: {ood_set: summary}}.")
    sets = list(dict.fromkeys(name for per_set in results.values() for name in per_set))
    frames = {}
    for metric, key in (("AUROC", "auroc"), ("FPR95", "fpr95")):
        values = pd.DataFrame({s: {o: results[s].get(o, {}).get(key, np.nan) for o in sets} for s in results}).T
        values = values[sets] * 100                                           # (scores, sets)
        values["average"] = values.mean(axis=1, skipna=False)
        frames[metric] = values
    return pd.concat(frames, axis=1).round(2)
