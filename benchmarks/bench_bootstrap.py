"""Bootstrap intervals of every metric: vectorised ``helpers.metrics.bootstrap`` against a straightforward loop.

One (score, set) pair: 10,000 ID and 10,000 OOD scores (seeded normal draws, ID shifted by 1, so AUROC is
about 0.76), 1,000 replicates. The vectorised path sorts each sample once and evaluates all replicates of a
block from count vectors (``metrics.bootstrap_replicates``); the loop draws one replicate at a time from the
same two seeded generators and calls ``metrics.ood_metrics`` (scikit-learn) on it. The loop runs a subset of
the replicates (20 by default) and its time is scaled per replicate; its replicates are compared with the
vectorised ones (max absolute difference over all five metrics).

Goals: 1,000 replicates of all five metrics in <= 0.5 s; equal to the loop (<= 1e-12).

    python benchmarks/bench_bootstrap.py [--quick | --full] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import common  # noqa: I001 - puts the repository on sys.path
import numpy as np

from helpers import metrics

# n per set, replicates, loop replicates, repetitions
SIZES = {"quick": (2_000, 200, 10, 2), "default": (10_000, 1_000, 20, 3), "full": (10_000, 1_000, 100, 5)}


def loop(s_id: np.ndarray, s_ood: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """One replicate at a time: the same draws as ``metrics.resample_indices``, ``ood_metrics`` on each."""
    rng_id, rng_ood = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    rows = [metrics.ood_metrics(s_id[rng_id.integers(0, s_id.size, s_id.size)],
                                s_ood[rng_ood.integers(0, s_ood.size, s_ood.size)]) for _ in range(n_boot)]
    return {k: np.array([r[k] for r in rows]) for k in metrics.METRICS}


def main() -> int:
    args = common.parser(__doc__).parse_args()
    common.setup_torch(args.threads)
    m = common.header("Bootstrap of all five metrics: vectorised vs loop", args)
    n, n_boot, n_loop, repeats = SIZES[common.size(args)]
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)
    times = common.interleaved({"vectorised": lambda: metrics.bootstrap(s_id, s_ood, n_boot=n_boot, seed=0),
                                "loop": lambda: loop(s_id, s_ood, n_loop, 0)}, repeats=repeats, warmup=1)
    vec, per_loop = common.median(times["vectorised"]), common.median(times["loop"]) / n_loop
    fast = metrics.bootstrap_replicates(s_id, s_ood, n_boot=n_loop, seed=0)
    ref = loop(s_id, s_ood, n_loop, 0)
    diff = max(float(np.max(np.abs(fast[k] - ref[k]))) for k in metrics.METRICS)
    print(f"{n:,} ID + {n:,} OOD scores, {n_boot:,} replicates, {repeats} interleaved repetitions (loop: "
          f"{n_loop} replicates, scaled)")
    common.table([{"method": "metrics.bootstrap (vectorised)", f"s per {n_boot:,} replicates": vec},
                  {"method": "loop of ood_metrics", f"s per {n_boot:,} replicates": per_loop * n_boot}],
                 ["method", f"s per {n_boot:,} replicates"])
    print(f"speed-up: {per_loop * n_boot / vec:.1f}x; max |vectorised - loop| over {n_loop} replicates and 5 "
          f"metrics: {diff:.2e}")
    goals = [common.goal(f"{n_boot:,} replicates of 5 metrics", vec, 0.5, higher_is_better=False, unit=" s"),
             common.goal("max |vectorised - loop|", diff, 1e-12, higher_is_better=False)]
    common.write_json(args.json, dict(machine=m, size=common.size(args), n=n, n_boot=n_boot, n_loop=n_loop,
                                      times=times, max_abs_diff=diff, goals=goals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
