"""Fit and score times of the feature-based OOD scores, vectorised vs looped Mahalanobis, KNN old vs new,
and the float32 choices of ``helpers.ood`` against float64.

Features: seeded random features with class structure (100 class means plus correlated within-class noise),
50,000 x 512 for training and 10,000 x 512 for testing (the full profile's sizes: CIFAR-100, ResNet-18),
plus 10,000 OOD-like features (class means shrunk by half, 5 % wider noise); float32 as the feature cache
stores them; logits
from a random last layer W (100, 512), b (100,).

1. ``helpers.ood`` Mahalanobis, ViM, NECO (and KNN, k = 50): fit on the training features, score the test
   features; median wall seconds over interleaved repetitions.
2. Mahalanobis, vectorised (``helpers.ood.Mahalanobis.score``, all test samples at once) vs a per-sample,
   per-class Python loop computing the same squared distances (h - mu_c)^T Sigma_W^+ (h - mu_c) with numpy,
   from class means and a pseudo-inverse computed independently in numpy. The loop runs on a subset of the
   test samples (200 by default) and its time is scaled per sample; the ratio compares seconds per test sample.
   The scores of the two on that subset are compared (max relative difference).

3. KNN (k = 50) on 10,000 queries (500 with --quick): ``helpers.ood.KNN`` with its bfloat16 prefilter (one
   bf16 product bounds every similarity, then the candidates are re-ranked exactly in float32) against the
   same class with the prefilter off (normalised float32 products in chunks, ``torch.topk``: the previous
   code), side by side, with the bare float32 and bfloat16 products of the queries with the bank as floors;
   AUROC of ID test queries against as many OOD queries, prefilter against full product (and against the
   float64 code of before issue 17, ``knn_previous``, on the first 1,000).
4. Precision: ViM, NECO, NECO x max logit and KNN with ``compute_dtype`` float32 (the default) against
   float64 on the same fitted data: |AUROC difference| (ID test vs OOD) and fit+score seconds.

Goals: vectorised Mahalanobis >= 200x faster than the loop per sample; scores equal to 1e-4 relative;
KNN 10,000 queries against 50,000 x 512 in <= 2 s; every float32 choice within 1e-6 AUROC of float64.

    python benchmarks/bench_scores.py [--quick | --full] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import time

import common  # noqa: I001 - puts the repository on sys.path
import numpy as np
import torch

from helpers import metrics, ood

# train N, test N, loop subset, KNN queries, repetitions
SIZES = {"quick": (10_000, 2_000, 50, 500, 2), "default": (50_000, 10_000, 200, 10_000, 3),
         "full": (50_000, 10_000, 1_000, 10_000, 3)}
K, D = 100, 512


def make_features(n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Class-structured features: h = mu_y + noise A, noise (N, r) with a fixed mixing A (r, D); float32."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 1.0, (K, D))                                       # (K, D) class means
    A = rng.normal(0, 1 / np.sqrt(D), (D, D)) + 0.3 * np.eye(D)           # (D, D) within-class mixing
    W = mu / np.linalg.norm(mu, axis=1, keepdims=True) + rng.normal(0, 0.05, (K, D))   # (K, D)
    b = rng.normal(0, 0.1, K)                                             # (K,)

    def draw(n: int, shrink: float = 1.0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = rng.integers(0, K, n)                                         # (n,)
        h = (shrink * mu[y] + scale * rng.normal(0, 1.0, (n, D)) @ A).astype(np.float32)   # (n, D)
        return h, (h @ W.T + b).astype(np.float32), y

    h_tr, z_tr, y_tr = draw(n_train)
    h_te, z_te, _ = draw(n_test)
    h_ood, z_ood, _ = draw(n_test, shrink=0.5, scale=1.05)
    return dict(h_train=h_tr, z_train=z_tr, y_train=y_tr, h_test=h_te, z_test=z_te, h_ood=h_ood, z_ood=z_ood,
                W=W.astype(np.float32), b=b.astype(np.float32))


def reference_fit(h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, D) and Sigma_W^+ (D, D) in numpy float64, written out plainly."""
    h = h.astype(np.float64)
    mu = np.stack([h[y == c].mean(0) for c in range(K)])                 # (K, D)
    centred = h - mu[y]
    sigma_w = centred.T @ centred / len(h)                               # (D, D)
    return mu, np.linalg.pinv(sigma_w, hermitian=True)


def loop_mahalanobis(h: np.ndarray, mu: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """-min_c (h_i - mu_c)^T P (h_i - mu_c), one sample and one class at a time (the reference)."""
    out = np.empty(len(h))
    for i in range(len(h)):
        x = h[i].astype(np.float64)
        best = np.inf
        for c in range(len(mu)):
            d = x - mu[c]
            best = min(best, float(d @ precision @ d))
        out[i] = -best
    return out


def knn_previous(bank: torch.Tensor, h: np.ndarray, k: int) -> np.ndarray:
    """The KNN score before issue 17: float64, chunks of (rows x N_train) products, sorted top-k."""
    q = torch.nn.functional.normalize(torch.as_tensor(h, dtype=torch.float64), dim=1)
    rows = max(1, 2**22 // bank.shape[0])
    kth = [(c @ bank.T).topk(k, dim=1).values[:, -1] for c in q.split(rows)]
    return (-(2 - 2 * torch.cat(kth)).clamp_min(0).sqrt()).numpy()


def auroc(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    return metrics.ood_metrics(s_id, s_ood)["auroc"]


def knn_old_new(f: dict[str, np.ndarray], n_q: int, repeats: int) -> dict:
    """KNN (k = 50) on n_q queries: the bfloat16 prefilter with exact re-ranking (the default where bf16
    products are fast) against the float32 full product (the previous code), with the bare products as floors."""
    args = (f["h_train"], f["z_train"], f["y_train"], f["W"], f["b"])
    fast, full = ood.KNN(k=50).fit(*args), ood.KNN(k=50).fit(*args)
    fast.prefilter, full.prefilter = True, False
    bank32 = full.bank_.float()
    bank16 = bank32.bfloat16()
    q_id, z_id, q_ood, z_ood = f["h_test"][:n_q], f["z_test"][:n_q], f["h_ood"][:n_q], f["z_ood"][:n_q]
    q32 = torch.nn.functional.normalize(torch.as_tensor(q_id), dim=1)
    q16 = q32.bfloat16()
    times = common.interleaved({"float32 full product (previous)": lambda: full.score(q_id, z_id),
                                "helpers.ood.KNN (bf16 prefilter)": lambda: fast.score(q_id, z_id),
                                "bare float32 product": lambda: [c @ bank32.T for c in q32.split(256)],
                                "bare bfloat16 product": lambda: [c @ bank16.T for c in q16.split(256)]},
                               repeats=repeats, warmup=0)
    s_fast = (fast.score(q_id, z_id), fast.score(q_ood, z_ood))
    s_full = (full.score(q_id, z_id), full.score(q_ood, z_ood))
    n64 = min(n_q, 1_000)                                   # float64 reference on the first 1,000
    bank64 = full.bank_
    diff64 = abs(auroc(knn_previous(bank64, q_id[:n64], 50), knn_previous(bank64, q_ood[:n64], 50))
                 - auroc(s_fast[0][:n64], s_fast[1][:n64]))
    return dict(times=times, auroc_diff=abs(auroc(*s_fast) - auroc(*s_full)), auroc_diff_float64=diff64,
                max_score_diff=float(max(np.abs(a - b).max() for a, b in zip(s_fast, s_full, strict=True))),
                queries=n_q,
                bf16_fast=ood.bf16_products_are_fast())


def precision_checks(f: dict[str, np.ndarray], n_knn: int) -> list[dict]:
    """|AUROC(float32) - AUROC(float64)| and fit+score seconds of each score that uses ``compute_dtype``."""
    args = (f["h_train"], f["z_train"], f["y_train"], f["W"], f["b"])
    rows = []
    for name in ("vim", "neco", "neco_maxlogit", "knn"):
        n = n_knn if name == "knn" else len(f["h_test"])
        out, secs = {}, {}
        for dtype in (torch.float32, torch.float64):
            s = ood.make_score(name)
            s.compute_dtype = dtype
            t0 = time.perf_counter()
            s.fit(*args)
            out[dtype] = auroc(s.score(f["h_test"][:n], f["z_test"][:n]), s.score(f["h_ood"][:n], f["z_ood"][:n]))
            secs[dtype] = time.perf_counter() - t0
        rows.append({"score": name, "AUROC float32": out[torch.float32], "|diff| vs float64":
                     abs(out[torch.float32] - out[torch.float64]), "s float32": secs[torch.float32],
                     "s float64": secs[torch.float64], "queries": 2 * n})
    return rows


def fit_score_times(f: dict[str, np.ndarray], repeats: int, knn_queries: int) -> tuple[list[dict], dict]:
    """Median fit and score seconds of each score, the scores interleaved within each repetition."""
    args = (f["h_train"], f["z_train"], f["y_train"], f["W"], f["b"])
    scores = {"mahalanobis": ood.Mahalanobis(), "vim": ood.ViM(), "neco": ood.NECO(), "knn": ood.KNN(k=50)}
    test = {name: (f["h_test"], f["z_test"]) for name in scores}
    test["knn"] = (f["h_test"][:knn_queries], f["z_test"][:knn_queries])
    times: dict[str, dict[str, list[float]]] = {n: {"fit": [], "score": []} for n in scores}
    for _ in range(repeats):
        for name, s in scores.items():
            t0 = time.perf_counter()
            s.fit(*args)
            t1 = time.perf_counter()
            s.score(*test[name])
            times[name]["fit"].append(t1 - t0)
            times[name]["score"].append(time.perf_counter() - t1)
    rows = []
    for name, t in times.items():
        n_test = len(test[name][0])
        fit, score = common.median(t["fit"]), common.median(t["score"])
        rows.append({"score": name, "fit s": fit, "score s": score, "test samples": n_test,
                     "score s per 10k": score * 10_000 / n_test, "fit+score(10k) s": fit + score * 10_000 / n_test})
    return rows, {"times": times, "maha": scores["mahalanobis"]}


def main() -> int:
    args = common.parser(__doc__).parse_args()
    common.setup_torch(args.threads)
    m = common.header("OOD scores: fit/score times, vectorised vs looped Mahalanobis", args)
    n_train, n_test, n_loop, n_knn, repeats = SIZES[common.size(args)]
    t0 = time.perf_counter()
    f = make_features(n_train, n_test)
    print(f"features: train {n_train:,} x {D}, test {n_test:,} x {D}, K = {K} (made in "
          f"{time.perf_counter() - t0:.1f} s); {repeats} repetitions, medians")

    rows, extra = fit_score_times(f, repeats, n_knn)
    common.table(rows, ["score", "fit s", "score s", "test samples", "score s per 10k", "fit+score(10k) s"])
    print(f"(KNN scores {n_knn:,} queries against all {n_train:,} training features; the per-10k column scales "
          "that linearly)")

    maha = extra["maha"]
    mu, precision = reference_fit(f["h_train"], f["y_train"])
    sub_h, sub_z = f["h_test"][:n_loop], f["z_test"][:n_loop]
    times = common.interleaved({"vectorised": lambda: maha.score(f["h_test"], f["z_test"]),
                                "loop": lambda: loop_mahalanobis(sub_h, mu, precision)},
                               repeats=repeats, warmup=0)
    per_vec = common.median(times["vectorised"]) / n_test
    per_loop = common.median(times["loop"]) / n_loop
    ours, ref = maha.score(sub_h, sub_z), loop_mahalanobis(sub_h, mu, precision)
    rel = float(np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12)))
    print(f"\nMahalanobis score, {repeats} interleaved repetitions (vectorised on all {n_test:,} test samples, "
          f"loop on the first {n_loop}, scaled per sample):")
    common.table([{"method": "vectorised (helpers.ood.Mahalanobis.score)", "ms per sample": per_vec * 1e3,
                   "samples/s": 1 / per_vec, "speed-up": per_loop / per_vec, "max rel. diff": rel},
                  {"method": f"per-sample, per-class Python loop (numpy, {K} classes)", "ms per sample": per_loop * 1e3,
                   "samples/s": 1 / per_loop, "speed-up": 1.0, "max rel. diff": 0.0}],
                 ["method", "ms per sample", "samples/s", "speed-up", "max rel. diff"])
    ratio = per_loop / per_vec
    print(f"ratio loop/vectorised (seconds per sample): {ratio:,.0f}x; max relative score difference on the "
          f"{n_loop} samples: {rel:.2e}")
    goals = [common.goal("Mahalanobis speed-up", ratio, 200, unit="x"),
             common.goal("max relative score difference", rel, 1e-4, higher_is_better=False)]

    knn = knn_old_new(f, n_knn, repeats)
    med = {k: common.median(v) for k, v in knn["times"].items()}
    print(f"\nKNN (k = 50), {n_knn:,} queries against {n_train:,} x {D}, {repeats} interleaved repetitions "
          f"(CPU multiplies bfloat16 natively: {knn['bf16_fast']}):")
    common.table([{"method": k, "s": v, "s per 10k queries": v * 10_000 / n_knn} for k, v in med.items()],
                 ["method", "s", "s per 10k queries"])
    fast, full = med["helpers.ood.KNN (bf16 prefilter)"], med["float32 full product (previous)"]
    print(f"speed-up prefilter/full: {full / fast:.2f}x; prefilter / bare bf16 product: "
          f"{fast / med['bare bfloat16 product']:.2f}; |AUROC prefilter - full| on {n_knn:,} ID vs {n_knn:,} OOD "
          f"queries: {knn['auroc_diff']:.2e} (max score difference {knn['max_score_diff']:.1e}); against float64 "
          f"on the first 1,000: {knn['auroc_diff_float64']:.2e}")
    goals += [common.goal("KNN s per 10,000 queries", fast * 10_000 / n_knn, 2.0, higher_is_better=False, unit=" s"),
              common.goal("KNN |AUROC prefilter - full product|", knn["auroc_diff"], 1e-6, higher_is_better=False)]

    prec = precision_checks(f, n_knn)
    print("\nfloat32 products (compute_dtype, the default) against float64, same data (ID test vs OOD):")
    common.table(prec, ["score", "AUROC float32", "|diff| vs float64", "s float32", "s float64", "queries"])
    goals.append(common.goal("max |AUROC float32 - float64|", max(r["|diff| vs float64"] for r in prec), 1e-6,
                             higher_is_better=False))
    common.write_json(args.json, dict(machine=m, size=common.size(args), sizes=dict(train=n_train, test=n_test,
                      loop=n_loop, knn=n_knn, repeats=repeats), rows=rows, fit_score_seconds=extra["times"],
                      maha_seconds=times, ratio=ratio, max_rel_diff=rel, knn=knn, precision=prec, goals=goals))
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
