"""Bootstrap intervals of every metric: ``helpers.metrics.bootstrap`` against its previous version and a loop.

One (score, set) pair: 10,000 ID and 10,000 OOD scores (seeded normal draws, ID shifted by 1, so AUROC is
about 0.76), 1,000 replicates, timed side by side (interleaved):

- ``metrics.bootstrap``: each sample sorted once, replicates as count vectors over the distinct values,
  integer cumulative sums, blocks of replicates on ``metrics._WORKERS`` (2) threads;
- the same on 1 thread (``_WORKERS = 1``);
- ``previous``: the implementation before issue 17 point 3 (float64 cumulative sums, full tie matrix),
  kept below as ``previous_replicates``;
- the loop: one replicate at a time from the same two seeded generators, ``metrics.ood_metrics``
  (scikit-learn) on each; it runs a subset of the replicates and its time is scaled per replicate.

The loop's replicates are compared with the vectorised ones (max absolute difference over all five metrics),
and the previous version's with the new one's. Wall seconds and process CPU seconds are both printed: on a
loaded machine the wall time includes waiting for a core.

Goals: 1,000 replicates of all five metrics in <= 0.5 s; equal to the loop (<= 1e-12).

    python benchmarks/bench_bootstrap.py [--quick | --full] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import time

import common  # noqa: I001 - puts the repository on sys.path
import numpy as np

from helpers import metrics

# n per set, replicates, loop replicates, repetitions
SIZES = {"quick": (2_000, 200, 5, 2), "default": (10_000, 1_000, 10, 3), "full": (10_000, 1_000, 100, 5)}


def _previous_block(a: np.ndarray, c: np.ndarray, p: metrics.SortedScores) -> dict[str, np.ndarray]:
    """The previous ``metrics_from_counts``: float64 counts and cumulative sums, a dense (b, n_v) tie matrix."""
    a, c = a.astype(np.float64), c.astype(np.float64)
    n, m = int(a[0].sum()), int(c[0].sum())
    A, C = (np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x, axis=1)], axis=1) for x in (a, c))
    w_le_v = p.w_lt_v.copy()
    w_le_v[p.tie_v] += 1                                                     # #{w <= v_u}: ties add one value
    C_le_v, tie = C[:, w_le_v], np.zeros_like(a)
    tie[:, p.tie_v] = c[:, p.tie_w]
    A_le_w = A[:, p.v_le_w]
    id_ge, ood_ge = n - A[:, :-1], m - C_le_v + tie
    rows = np.arange(a.shape[0])
    u_id = np.array([np.searchsorted(r, n - metrics.n_kept(n) + 1) for r in A[:, 1:]])
    u_ood = np.array([np.searchsorted(r, metrics.n_kept(m)) for r in C[:, 1:]])
    return {
        metrics.AUROC: (np.einsum("ij,ij->i", a, C_le_v) - 0.5 * np.einsum("ij,ij->i", a, tie)) / (n * m),
        metrics.FPR95: (m - C[rows, p.w_lt_v[u_id]]) / m,
        metrics.FPR95_OOD_POSITIVE: A_le_w[rows, u_ood] / n,
        metrics.AUPR_IN: np.einsum("ij,ij->i", a, id_ge / np.maximum(id_ge + ood_ge, 1)) / n,
        metrics.AUPR_OUT: np.einsum("ij,ij->i", c, C[:, 1:] / np.maximum(C[:, 1:] + A_le_w, 1)) / m,
    }


def previous_replicates(s_id: np.ndarray, s_ood: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """The previous ``bootstrap_replicates``: same draws and blocks, one thread, ``_previous_block``."""
    p = metrics.SortedScores.of(s_id, s_ood)
    parts = [_previous_block(metrics._counts(p.g_id, i, p.n_v), metrics._counts(p.g_ood, j, p.n_w), p)
             for i, j in metrics.resample_indices(s_id.size, s_ood.size, n_boot, seed)]
    return {k: np.concatenate([x[k] for x in parts]) for k in metrics.METRICS}


def one_thread(s_id: np.ndarray, s_ood: np.ndarray, n_boot: int) -> dict[str, tuple[float, float]]:
    """``metrics.bootstrap`` with ``_WORKERS = 1``."""
    workers, metrics._WORKERS = metrics._WORKERS, 1
    try:
        return metrics.bootstrap(s_id, s_ood, n_boot=n_boot, seed=0)
    finally:
        metrics._WORKERS = workers


def cpu_seconds(fn, repeats: int) -> float:
    """Median process CPU seconds (all threads) of ``fn``."""
    out = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        out.append(time.process_time() - start)
    return float(np.median(out))


def loop(s_id: np.ndarray, s_ood: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """One replicate at a time: the same draws as ``metrics.resample_indices``, ``ood_metrics`` on each."""
    rng_id, rng_ood = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    rows = [metrics.ood_metrics(s_id[rng_id.integers(0, s_id.size, s_id.size)],
                                s_ood[rng_ood.integers(0, s_ood.size, s_ood.size)]) for _ in range(n_boot)]
    return {k: np.array([r[k] for r in rows]) for k in metrics.METRICS}


def main() -> int:
    args = common.parser(__doc__).parse_args()
    common.setup_torch(args.threads)
    m = common.header("Bootstrap of all five metrics: vectorised vs previous vs loop", args)
    n, n_boot, n_loop, repeats = SIZES[common.size(args)]
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)
    fns = {"new": lambda: metrics.bootstrap(s_id, s_ood, n_boot=n_boot, seed=0),
           "new, 1 thread": lambda: one_thread(s_id, s_ood, n_boot),
           "previous": lambda: previous_replicates(s_id, s_ood, n_boot, 0),
           "loop": lambda: loop(s_id, s_ood, n_loop, 0)}
    times = common.interleaved(fns, repeats=repeats, warmup=1)
    cpu = {k: cpu_seconds(fn, 1) for k, fn in fns.items()}
    scale = {"loop": n_boot / n_loop}
    col, ccol = f"wall s per {n_boot:,}", f"CPU s per {n_boot:,}"
    rows = [{"method": k, col: common.median(v) * scale.get(k, 1), ccol: cpu[k] * scale.get(k, 1),
             "spread": common.spread(v)} for k, v in times.items()]
    fast = metrics.bootstrap_replicates(s_id, s_ood, n_boot=n_boot, seed=0)
    ref, prev = loop(s_id, s_ood, n_loop, 0), previous_replicates(s_id, s_ood, n_boot, 0)
    diff = max(float(np.max(np.abs(fast[k][:n_loop] - ref[k]))) for k in metrics.METRICS)
    diff_prev = max(float(np.max(np.abs(fast[k] - prev[k]))) for k in metrics.METRICS)
    print(f"{n:,} ID + {n:,} OOD scores, {n_boot:,} replicates, {repeats} interleaved repetitions (loop: "
          f"{n_loop} replicates, scaled)")
    common.table(rows, ["method", col, ccol, "spread"])
    new, old = common.median(times["new"]), common.median(times["previous"])
    print(f"speed-up over previous: {old / new:.1f}x wall, {cpu['previous'] / cpu['new']:.1f}x CPU; over the loop: "
          f"{common.median(times['loop']) * scale['loop'] / new:.0f}x wall")
    print(f"max |new - loop| over {n_loop} replicates: {diff:.2e}; max |new - previous| over {n_boot:,}: "
          f"{diff_prev:.2e} (5 metrics)")
    goals = [common.goal(f"{n_boot:,} replicates of 5 metrics", new, 0.5, higher_is_better=False, unit=" s"),
             common.goal("max |vectorised - loop|", diff, 1e-12, higher_is_better=False)]
    common.write_json(args.json, dict(machine=m, size=common.size(args), n=n, n_boot=n_boot, n_loop=n_loop,
                                      times=times, cpu=cpu, max_abs_diff=diff, max_abs_diff_previous=diff_prev,
                                      goals=goals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
