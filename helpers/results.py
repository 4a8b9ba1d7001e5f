"""The Results chapter, generated from metrics JSON: the executed run, the committed snapshots, the literature.

A *snapshot* is a folder ``results/<profile>-<id set>/`` holding ``run.json`` (provenance),
``metrics/seed-<s>/*.json`` (one folder per seed) and ``figures/``; :func:`write_snapshot` makes one from a
run and :func:`results_markdown` renders the executed run, every snapshot (mean ± std over seeds beside the
per-seed bootstrap intervals) and the published numbers of ``results/published.json``.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from .config import REPO_ROOT, Config
from .report import figures_dir, load_metrics, metrics_dir

RESULTS = REPO_ROOT / "results"
NAMES = ("training", "ood", "collapse", "nc5", "layers")
SCORE_ORDER = ("msp", "maxlogit", "energy", "mahalanobis", "vim", "neco", "knn", "react", "ash", "gen")


def snapshot_name(cfg: Config) -> str:
    return f"{cfg.profile}-{cfg.id_dataset.replace('imagefolder:', '').strip('/').replace('/', '_')}"


def write_snapshot(cfg: Config, seeds: list[int], run_dirs: dict[int, Path]) -> Path:
    """Copy the metrics of every seed, the last seed's figures and provenance into ``results/<name>/``."""
    dest = RESULTS / snapshot_name(cfg)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for seed in seeds:
        shutil.copytree(run_dirs[seed] / "metrics", tmp / "metrics" / f"seed-{seed}")
    if (run_dirs[seeds[-1]] / "figures").exists():
        shutil.copytree(run_dirs[seeds[-1]] / "figures", tmp / "figures")
    info = json.loads((run_dirs[seeds[-1]] / "run.json").read_text())
    info["seeds"] = {str(s): json.loads((run_dirs[s] / "run.json").read_text())["seconds"] for s in seeds}
    (tmp / "run.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


# ------------------------------------------------------------------------------------------- formatting
def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _num(values: list[float | None], digits: int = 3, percent: bool = False) -> str:
    """One value, or mean ± std over seeds: percentages to one decimal, other numbers to ``digits`` figures."""
    scale, fmt, fmt_std = (100, ".1f", ".1f") if percent else (1, f".{digits}g", ".2g")
    values = [scale * v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt_std)}"


def _mean_std(values: list[float | None]) -> str:
    return _num(values, percent=True)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _scores(ood: dict[str, Any]) -> list[str]:
    return sorted(ood["results"], key=lambda s: SCORE_ORDER.index(s) if s in SCORE_ORDER else 99)


def ood_table(runs: list[dict[str, Any]], metric: str = "auroc") -> list[str]:
    """Score × OOD set table of ``metric`` (%): one seed with its bootstrap interval, or mean ± std over seeds."""
    first = runs[0]
    sets = first["ood_sets"]
    rows = []
    for s in _scores(first):
        cells = []
        for o in sets + ["average"]:
            if o == "average":
                vals = [r["average"][s][metric] for r in runs]
                cells.append(_mean_std(vals))
            elif len(runs) == 1:
                m = first["results"][s][o]
                cells.append(f"{_pct(m[metric])} [{_pct(m[metric + '_low'])}, {_pct(m[metric + '_high'])}]")
            else:
                cells.append(_mean_std([r["results"][s][o][metric] for r in runs]))
        rows.append([f"`{s}`"] + cells)
    return _table(["score"] + sets + ["average"], rows)


def _sanity(runs: list[dict[str, Any]]) -> list[str]:
    v = [m["auroc"] for r in runs for m in r["id_vs_id"]["scores"].values()]
    return [f"ID-vs-ID sanity check (two halves of the ID test set): AUROC between {min(v):.3f} and {max(v):.3f} "
            f"over all scores (expected 0.5 ± {runs[0]['id_vs_id']['null_sd']:.3f})."]


def _section(title: str, folder_runs: list[Path], figures: Path | None, fig_prefix: str,
             info: dict | None) -> list[str]:
    """Markdown of one run or snapshot (``folder_runs``: one metrics folder per seed)."""
    out = [f"## {title}", ""]
    if info:
        seeds = sorted(info.get("seeds", {str(info["config"]["seed"]): None}))
        secs = info.get("seconds", {})
        c = info["config"]
        out += [f"Profile `{info['profile']}`, ID set `{c['id_dataset']}`, width {c['width']}, {c['epochs']} epochs, "
                f"seeds {', '.join(seeds)}; commit `{info['commit']}`, "
                f"{info['date']}, {info['machine']['cpus']} CPUs ({info['machine']['platform']}), "
                f"GPU: {info['machine']['gpu'] or 'none'}, torch {info['machine']['torch']}.", ""]
        if secs:
            out += ["Wall time per notebook: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(secs.items())) + ".", ""]
    data = {n: [m for m in (load_metrics(f, n) for f in folder_runs) if m] for n in NAMES}
    if data["training"]:
        t = data["training"]
        out += [f"**Training.** Train accuracy {_mean_std([r['train_acc'] for r in t])} %, test accuracy "
                f"{_mean_std([r['test_acc'] for r in t])} % at the last epoch; terminal phase (train accuracy ≥ 99 %) "
                f"from epoch "
                f"{', '.join('not reached' if r['tpt_onset'] is None else str(r['tpt_onset']) for r in t)}.", ""]
    if data["ood"]:
        o = data["ood"]
        what = "per-seed bootstrap 95 % intervals" if len(o) == 1 else f"mean ± std over {len(o)} seeds"
        out += [f"**OOD detection, AUROC (%)** ({what}; ID set `{o[0]['id_set']}`):", ""] + ood_table(o) + [""]
        out += [f"**FPR at 95 % TPR (%)** (ID positive, lower is better; {what}):", ""] + ood_table(o, "fpr95") + [""]
        out += _sanity(o) + [""]
    out += collapse_lines(data)
    if figures is not None and figures.exists():
        for png in sorted(figures.glob("*.png")) + sorted(figures.glob("*.gif")):
            out += [f"```{{figure}} {fig_prefix}/{png.name}", ":width: 90%", "", f"`{png.stem}`", "```", ""]
    return out


def nc1_trend(collapse: dict[str, Any]) -> float:
    """Spearman rank correlation between epoch and NC1 over the saved checkpoints."""
    from scipy.stats import spearmanr

    rows = collapse["trajectory"]
    return float(spearmanr([r["epoch"] for r in rows], [r["nc1"] for r in rows]).statistic)


def collapse_lines(data: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Final-epoch neural-collapse numbers from the ``collapse``, ``nc5`` and ``layers`` metrics."""
    out = []
    if data["collapse"]:
        c = data["collapse"]
        keys = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_equinorm_w", "nc2_equiangular_w", "nc3",
                "nc4", "test_nc4")
        rows = [[f"`{k}`", _num([r["final"].get(k) for r in c])] for k in keys]
        rows.append(["Spearman ρ(epoch, NC1)", _num([nc1_trend(r) for r in c], 2)])
        out += [f"**Neural collapse at the last checkpoint** (training set without augmentation; K = "
                f"{c[0]['num_classes']}, D = {c[0]['feature_dim']}):", ""] + _table(["metric", "value"], rows) + [""]
    if data["nc5"]:
        n = data["nc5"]
        last = max(r["epoch"] for r in n[0]["trajectory"])
        rows = []
        for o in n[0]["ood_sets"]:
            pick = [[r for r in run["trajectory"] if r["epoch"] == last and r["ood_set"] == o][0] for run in n]
            rho = [run["spearman"][o]["nc5_centred_rho"] for run in n]
            rows.append([f"`{o}`", _num([p["nc5"] for p in pick]), _num([p["nc5_centred"] for p in pick]),
                         _mean_std([p["auroc"] for p in pick]), _num(rho, 2)])
        out += [f"**NC5 at the last checkpoint (epoch {last})** and NECO's AUROC (%), with the Spearman correlation "
                "of centred NC5 and AUROC over the checkpoints:", ""]
        out += _table(["OOD set", "NC5", "NC5 centred", "NECO AUROC", "ρ(NC5 centred, AUROC)"], rows) + [""]
    if data["layers"]:
        lay = data["layers"]
        rows = []
        for b in range(len(lay[0]["final"])):
            rs = [run["final"][b] for run in lay]
            rows.append([str(rs[0]["block"]), str(rs[0]["channels"]), _num([r["nc1"] for r in rs]),
                         _num([r["cdnv"] for r in rs]), _num([r["nc2_equiangular"] for r in rs]),
                         _mean_std([r["ncc_train"] for r in rs]), _mean_std([r["ncc_test"] for r in rs])])
        out += ["**Earlier layers at the last checkpoint** (NCC accuracy in %):", ""]
        out += _table(["block", "channels", "NC1", "CDNV", "NC2 equiangular", "NCC train", "NCC test"], rows) + [""]
    return out


def literature_lines() -> list[str]:
    path = RESULTS / "published.json"
    if not path.exists():
        return []
    pub = json.loads(path.read_text())
    out = ["## Published results", ""]
    for entry in pub.values():
        scores = entry["scores"]
        cols = sorted({c for v in scores.values() for c in v if not c.endswith("_std")})
        rows = []
        for s in sorted(scores, key=lambda s: SCORE_ORDER.index(s) if s in SCORE_ORDER else 99):
            cells = []
            for c in cols:
                v = scores[s].get(c)
                std = scores[s].get(f"{c}_std")
                cells.append("–" if v is None else (f"{v['auroc']:.2f} / {v['fpr95']:.2f}" if isinstance(v, dict)
                                                    else f"{v:.2f}" + (f" ± {std:.2f}" if std is not None else "")))
            rows.append([f"`{s}`"] + cells)
        header = ["score"] + [c.replace("_", " ") for c in cols]
        out += [f"**{entry['source']}**" + (" (AUROC / FPR95, %)" if isinstance(next(iter(
            next(iter(scores.values())).values())), dict) else " (AUROC, %)"), ""] + _table(header, rows) + [""]
    return out


def results_markdown(cfgs: Config | list[Config], stage_figures: Path | None = None) -> str:
    """Markdown of ``book/results.md``: this run (all its seeds), every committed snapshot, the literature.

    Figures are copied under ``stage_figures`` (the staged book's ``book/figures``) when given.
    """
    cfgs = [cfgs] if isinstance(cfgs, Config) else cfgs
    cfg = cfgs[-1]
    lines = ["(results)=", "# Results", "",
             "This page is generated by the runner from the metrics JSON files of the executed notebooks and of the "
             "result snapshots committed under `results/`. Synthetic data sets are named `synthetic-*` everywhere.", ""]
    info_path = cfg.run_dir() / "run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else None
    if info and len(cfgs) > 1:
        info["seeds"] = {str(c.seed): None for c in cfgs}
    if stage_figures is not None and figures_dir(cfg).exists():
        shutil.copytree(figures_dir(cfg), stage_figures / "run", dirs_exist_ok=True)
    lines += _section(f"This run (`{cfg.profile}` profile)", [metrics_dir(c) for c in cfgs],
                      figures_dir(cfg) if stage_figures is not None else None, "figures/run", info)
    for snap in sorted(p for p in RESULTS.glob("*/") if (p / "run.json").exists()):
        snap_info = json.loads((snap / "run.json").read_text())
        if info and snap_info["config"] == info["config"]:
            continue                                           # the run shown above is this snapshot's source
        if stage_figures is not None and (snap / "figures").exists():
            shutil.copytree(snap / "figures", stage_figures / snap.name, dirs_exist_ok=True)
        seeds = sorted((snap / "metrics").glob("seed-*"))
        lines += _section(f"Snapshot `{snap.name}` (committed)", seeds,
                          snap / "figures" if stage_figures is not None else None, f"figures/{snap.name}",
                          snap_info)
    lines += literature_lines()
    if (REPO_ROOT / "book" / "_comparison_notes.md").exists():
        lines += ["```{include} _comparison_notes.md", "```", ""]
    lines += ["## References", "", "```{bibliography}", ":filter: docname in docnames", "```", ""]
    return "\n".join(lines)
