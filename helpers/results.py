"""The Results chapter, generated from metrics JSON: the executed run, the committed snapshots, the literature.

A *snapshot* is a folder ``results/<profile>-<id set>/`` holding ``run.json`` (provenance),
``metrics/seed-<s>/*.json`` (one folder per seed), ``weights-seed-<s>.pt`` (the final float32 state dict,
read by ``python -m helpers.evaluate``) and ``figures/``; its folder is :func:`helpers.artifacts.snapshot_dir`.
:func:`write_snapshot` makes one from the runs (through :func:`helpers.artifacts.atomic_write`) and
:func:`results_markdown` renders the executed run, every snapshot (mean ± std over seeds beside the per-seed
bootstrap intervals) and the published numbers of ``results/published.json``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from . import artifacts
from . import checkpoint as ckpt
from .artifacts import RunPaths, atomic_write, read_json, snapshot_dir, write_json, write_torch
from .config import REPO_ROOT, Config
from .ood import SCORES
from .report import load_metrics
from .stats import spearman

NAMES = ("training", "ood", "collapse", "nc5", "layers")
WEIGHTS = "weights-seed-{seed}.pt"          # read back by helpers.evaluate
MAX_WEIGHTS_BYTES = 4 * 1024**2


def _order(names: Any) -> list[str]:
    """Score names in the order of ``helpers.ood.SCORES`` (unknown names last, alphabetically)."""
    order = list(SCORES)
    return sorted(names, key=lambda s: (order.index(s), "") if s in order else (len(order), s))


def _copy_file(src: Path, dest: Path) -> None:
    """Copy one file through the one atomic write."""
    atomic_write(dest, lambda out: out.write(Path(src).read_bytes()))


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy every file below ``src`` to ``dest`` through the one atomic write."""
    for f in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        _copy_file(f, dest / f.relative_to(src))


def write_weights(checkpoint: Path, dest: Path) -> Path:
    """The model state dict of ``checkpoint`` in float32 at ``dest`` (at most 4 MB; what a snapshot commits)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.load(checkpoint)["model"].items()}
    size = sum(v.numel() * v.element_size() for v in state.values())
    if size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"the weights of {checkpoint} take {size / 1024**2:.1f} MB, more than the 4 MB a snapshot "
                         "may commit; snapshot a narrower network (-p width).")
    return write_torch(state, dest)


def write_snapshot(cfg: Config, seeds: list[int], run_dirs: dict[int, Path]) -> Path:
    """``results/<profile>-<id set>/``: every seed's metrics and final weights, the last seed's figures, provenance.

    Seeds of the previous snapshot that were trained with the same setting (:func:`same_setting`) and are not
    among ``seeds`` are kept, so ``--seeds 2`` adds a third seed; a snapshot of another setting is replaced.
    Built in a ``.partial`` folder and renamed into place, so a failed snapshot leaves the previous one whole.
    """
    dest = snapshot_dir(cfg)
    tmp = dest.with_name(dest.name + ".partial")
    _remove(tmp)
    old, kept = _earlier_seeds(dest, cfg, seeds)
    for seed in kept:
        _copy_tree(dest / "metrics" / f"seed-{seed}", tmp / "metrics" / f"seed-{seed}")
        _copy_file(dest / WEIGHTS.format(seed=seed), tmp / WEIGHTS.format(seed=seed))
    runs = {seed: RunPaths(Path(run_dirs[seed])) for seed in seeds}
    for seed, run in runs.items():
        _copy_tree(run.metrics, tmp / "metrics" / f"seed-{seed}")
        found = ckpt.list_checkpoints(run.checkpoints)                  # {epoch: path}
        write_weights(found[max(found)], tmp / WEIGHTS.format(seed=seed))
    if runs[seeds[-1]].figures.exists():
        _copy_tree(runs[seeds[-1]].figures, tmp / "figures")
    write_json(tmp / "run.json", _snapshot_info(old, kept, {s: read_json(r.run_json) for s, r in runs.items()}))
    _remove(dest)
    tmp.replace(dest)
    return dest


def same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two run configurations (``run.json``) differ only in the seed and in where and how they ran."""
    machine = ("seed", "data_root", "artifacts", "device", "eval_batch_size")
    a, b = (json.loads(json.dumps(c)) for c in (a, b))                    # tuples of a Config become lists
    return {k: v for k, v in a.items() if k not in machine} == {k: v for k, v in b.items() if k not in machine}


def _earlier_seeds(dest: Path, cfg: Config, seeds: list[int]) -> tuple[dict[str, Any], list[int]]:
    """The previous snapshot's ``run.json`` and its seeds of ``cfg``'s setting that this snapshot keeps."""
    try:
        old = read_json(dest / "run.json") or {}
    except ValueError:                                                  # a damaged snapshot is replaced
        return {}, []
    if not old or not same_setting(old["config"], cfg.to_dict()):
        return {}, []
    return old, sorted(int(s) for s in old.get("seeds", {}) if int(s) not in seeds
                       and (dest / WEIGHTS.format(seed=s)).exists() and (dest / "metrics" / f"seed-{s}").is_dir())


def _snapshot_info(old: dict[str, Any], kept: list[int], new: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The last new run's ``run.json`` with every seed's wall times (``seeds``), commit (``commits``) and CPU
    thread count (``threads``: a CPU run repeats bit for bit only at the same count)."""
    info = dict(new[list(new)[-1]])
    old_commits = old.get("commits", {})
    info["seeds"] = {**{str(s): old["seeds"][str(s)] for s in kept}, **{str(s): r["seconds"] for s, r in new.items()}}
    info["commits"] = {**{str(s): old_commits.get(str(s), old.get("commit")) for s in kept},
                       **{str(s): r.get("commit") for s, r in new.items()}}
    old_threads = old.get("threads", {})                                 # CPU sums depend on the thread count
    info["threads"] = {**{str(s): old_threads.get(str(s), old.get("machine", {}).get("threads")) for s in kept},
                       **{str(s): r.get("machine", {}).get("threads") for s, r in new.items()}}
    return info


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


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
    return _order(ood["results"])


def ood_table(runs: list[dict[str, Any]], metric: str = "auroc") -> list[str]:
    """Score × OOD set table of ``metric`` (%), then the average and the group means: one seed with its bootstrap
    interval (where the metrics have one), or mean ± std over seeds."""
    first = runs[0]
    sets = first["ood_sets"]

    def cell(summaries: list[dict[str, float]]) -> str:          # one per seed
        m = summaries[0]
        if len(summaries) > 1 or metric + "_low" not in m:
            return _mean_std([x[metric] for x in summaries])
        return f"{_pct(m[metric])} [{_pct(m[metric + '_low'])}, {_pct(m[metric + '_high'])}]"

    groups = [g for g in first.get("groups", {}) if all(g in r.get("groups", {}) for r in runs)]
    rows = [[f"`{s}`"] + [cell([r["results"][s][o] for r in runs]) for o in sets]
            + [_mean_std([r["average"][s][metric] for r in runs])]
            + [cell([r["groups"][g]["mean"][s] for r in runs]) for g in groups]
            for s in _scores(first)]
    return _table(["score"] + sets + ["average"] + [f"{g} mean" for g in groups], rows)


def _our_columns(runs: list[dict[str, Any]], scores: dict, by_group: bool) -> tuple[list[tuple[str, str]], dict]:
    """(our column, their column) pairs and our mean AUROC per column and score: near/far group means for
    OpenOOD (``by_group``), else the OOD sets the publication also reports."""
    first = runs[0]
    if by_group:
        pairs = [(g, f"{g}_auroc") for g in ("near", "far") if g in first.get("groups", {})]
        return pairs, {g: {s: statistics.mean(r["groups"][g]["mean"][s]["auroc"] for r in runs)
                           for s in first["results"]} for g, _ in pairs}
    pairs = [(o, o) for o in first["ood_sets"] if any(o in v for v in scores.values())]
    return pairs, {o: {s: statistics.mean(r["results"][s][o]["auroc"] for r in runs) for s in first["results"]}
                   for o, _ in pairs}


def beside_published(runs: list[dict[str, Any]], entry: dict[str, Any], by_group: bool
                     ) -> tuple[list[str], dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(scores both report, our AUROC {column: {score: fraction}}, theirs {column: {score: %}}) for one published
    entry: OpenOOD v1.5's near/far group means (``by_group``) or NECO's per-set rows. Ours is the mean over seeds."""
    scores = entry["scores"]
    pairs, ours = _our_columns(runs, scores, by_group)
    common = [s for s in _order(scores) if s in runs[0]["results"]]
    theirs = {g: {s: scores[s][col]["auroc"] if isinstance(scores[s].get(col), dict) else scores[s].get(col)
                  for s in common} for g, col in pairs}
    common = [s for s in common if all(theirs[g][s] is not None for g, _ in pairs)]
    return common, {g: ours[g] for g, _ in pairs}, theirs


def published_entries(id_set: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The entries of ``results/published.json`` with ID set ``id_set``: {key: (short name, entry)}."""
    pub = read_json(artifacts.RESULTS / "published.json") or {}
    return {key: ("OpenOOD v1.5" if key.startswith("openood") else "NECO", entry)
            for key, entry in pub.items() if f"_{id_set}_" in key}


def comparison_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Our AUROC beside the published rows for the same ID set, per score, and the rank agreement of the methods.

    OpenOOD v1.5 (near/far group means) against our ``groups`` means; NECO's Table 2 per OOD set against our set
    of the same name. Spearman ρ is taken over the scores both report. Values are mean over seeds, in %.
    """
    id_set = runs[0]["id_set"]
    out: list[str] = []
    for key, (name, entry) in published_entries(id_set).items():
        common, ours, theirs = beside_published(runs, entry, by_group=key.startswith("openood"))
        if not ours or len(common) < 3:
            continue
        header = ["score"] + [f"{h} {g}" for g in ours for h in ("ours", name)]
        rows = [[f"`{s}`"] + [c for g in ours for c in (f"{100 * ours[g][s]:.1f}", f"{theirs[g][s]:.2f}")]
                for s in common]
        rho = [f"{g} ρ = {spearman([ours[g][s] for s in common], [theirs[g][s] for s in common])[0]:.2f}"
               for g in ours]
        out += [f"**Beside {name}** (AUROC %, ID `{id_set}`; {entry['setup']['architecture']}, "
                f"{entry['setup']['training']}; their ID test accuracy {entry['setup']['id_test_accuracy_percent']} "
                "%):", ""] + _table(header, rows) + [""]
        out += [f"Rank agreement of the {len(common)} scores both report (Spearman ρ of per-score AUROC): "
                + ", ".join(rho) + ".", ""]
    return out


def _sanity(runs: list[dict[str, Any]]) -> list[str]:
    v = [m["auroc"] for r in runs for m in r["id_vs_id"]["scores"].values()]
    return [f"ID-vs-ID sanity check (two halves of the ID test set): AUROC between {min(v):.3f} and {max(v):.3f} "
            f"over all scores (expected 0.5 ± {runs[0]['id_vs_id']['null_sd']:.3f}).", ""]


def _provenance(info: dict[str, Any]) -> list[str]:
    seeds = sorted(info.get("seeds", {str(info["config"]["seed"]): None}))
    secs, c, m = info.get("seconds", {}), info["config"], info["machine"]
    out = [f"Profile `{info['profile']}`, ID set `{c['id_dataset']}`, width {c['width']}, {c['epochs']} epochs, "
           f"seeds {', '.join(seeds)}; {_commits(info)}, {info['date']}, {m['cpus']} CPUs "
           f"({m['platform']}){_threads(info)}, GPU: {m['gpu'] or 'none'}, torch {m['torch']}.", ""]
    if info.get("data"):
        out += ["Data: " + "; ".join(f"`{name}` from {where}" for name, where in info["data"].items()) + ".", ""]
    if secs:
        out += ["Wall time per notebook: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(secs.items())) + ".", ""]
    return out


def _commits(info: dict[str, Any]) -> str:
    """``commit `abc1234` ``, or the commit of each seed when a snapshot's seeds were run at different commits."""
    commits = info.get("commits") or {}
    if len(set(commits.values())) <= 1:
        return f"commit `{info['commit']}`"
    return "commits " + ", ".join(f"`{c}` (seed {s})" for s, c in sorted(commits.items(), key=lambda x: int(x[0])))


def _threads(info: dict[str, Any]) -> str:
    """``, 1 thread``, or the threads of each seed when the seeds ran at different counts ("" if unrecorded)."""
    per_seed = {s: t for s, t in (info.get("threads") or {}).items() if t}
    counts = set(per_seed.values()) or {info["machine"].get("threads")} - {None}
    if len(counts) == 1:
        [n] = counts
        return f", {n} thread{'s' * (n != 1)}"
    return ", threads " + ", ".join(f"{t} (seed {s})" for s, t in sorted(per_seed.items(), key=lambda x: int(x[0])))


def _training_lines(t: list[dict[str, Any]]) -> list[str]:
    onsets = ", ".join("not reached" if r["tpt_onset"] is None else str(r["tpt_onset"]) for r in t)
    return [f"**Training.** Train accuracy {_mean_std([r['train_acc'] for r in t])} %, test accuracy "
            f"{_mean_std([r['test_acc'] for r in t])} % at the last epoch; terminal phase (train accuracy ≥ 99 %) "
            f"from epoch {onsets}.", ""]


def _ood_lines(o: list[dict[str, Any]]) -> list[str]:
    what = "per-seed bootstrap 95 % intervals" if len(o) == 1 else f"mean ± std over {len(o)} seeds"
    return ([f"**OOD detection, AUROC (%)** ({what}; ID set `{o[0]['id_set']}`):", ""] + ood_table(o) + [""]
            + [f"**FPR at 95 % TPR (%)** (ID positive, lower is better; {what}):", ""] + ood_table(o, "fpr95")
            + [""] + _sanity(o))


# The figures the notebooks save (helpers.report.save_figure), in the order of the narrative, with their captions.
FIGURES = {
    "id_samples": "Notebook 01: a few training images of the ID set, one per class shown.",
    "training_curves": "Notebook 01: loss and accuracy per epoch on the training, validation and test sets; the "
                       "marked epoch starts the terminal phase (training accuracy at least 99 %).",
    "ood_samples": "Notebook 02: a row of images of every OOD set.",
    "knn_k_validation": "Notebook 02: KNN's AUROC on the validation OOD set for each k; the k chosen there is used "
                        "on the test sets.",
    "score_histograms": "Notebook 02: distribution of each score on the ID test set and on each OOD set.",
    "roc_curves": "Notebook 02: ROC curves of every score on one OOD set, ID positive (TPR: ID kept, FPR: OOD "
                  "accepted).",
    "neco_sweep": "Notebook 02: NECO's AUROC against the dimension d of its principal subspace, per OOD set, "
                  "with the cumulative explained variance.",
    "auroc_heatmap": "Notebook 02: AUROC (%) of every score on every OOD set.",
    "collapse_curves": "Notebook 03: NC1 to NC4 and the accuracies over training (log scale where they span "
                       "decades), the start of the terminal phase marked.",
    "gram_heatmaps": "Notebook 03: cosines between the centred class means (left) and between the classifier rows "
                     "(right) at the last checkpoint; a simplex ETF has −1/(K−1) off the diagonal.",
    "class_means_snapshots": "Notebook 03: the centred class means projected on their first two principal "
                             "directions at several checkpoints.",
    "class_means": "Notebook 03: the same projection, one frame per checkpoint.",
    "nc5_curves": "Notebook 04: NC5 (uncentred and centred) and NECO's AUROC over training, one line per OOD set.",
    "nc5_vs_auroc": "Notebook 04: centred NC5 against NECO's AUROC, one point per checkpoint and OOD set.",
    "id_ood_projection": "Notebook 04: ID class means, ID test features and OOD features on the principal directions "
                         "of the ID class means at the last checkpoint.",
    "layer_heatmaps": "Notebook 05: NC1, NC1 per direction and the CDNV of every block over training.",
    "layer_profile": "Notebook 05: NC1, NC2 equiangularity and nearest-class-centre accuracy block by block at the "
                    "last checkpoint.",
}


def _figure_order(files: list[Path]) -> list[Path]:
    """Figures in the order of :data:`FIGURES`; others (unknown names) after them, alphabetically."""
    rank = {name: i for i, name in enumerate(FIGURES)}
    return sorted(files, key=lambda f: (rank.get(f.stem, len(rank)), f.name))


def _figure_lines(figures: Path | None, prefix: str) -> list[str]:
    if figures is None or not figures.exists():
        return []
    files = _figure_order([*figures.glob("*.png"), *figures.glob("*.gif")])
    return [line for f in files
            for line in (f"```{{figure}} {prefix}/{f.name}", ":width: 90%", "",
                         FIGURES.get(f.stem, f.stem.replace("_", " ").capitalize() + "."), "```", "")]


def _section(title: str, folder_runs: list[Path], figures: Path | None, fig_prefix: str,
             info: dict | None) -> list[str]:
    """Markdown of one run or snapshot (``folder_runs``: one metrics folder per seed)."""
    data = {n: [m for m in (load_metrics(f, n) for f in folder_runs) if m] for n in NAMES}
    return ([f"## {title}", ""] + (_provenance(info) if info else [])
            + (_training_lines(data["training"]) if data["training"] else [])
            + (_ood_lines(data["ood"]) + comparison_lines(data["ood"]) if data["ood"] else []) + collapse_lines(data)
            + _figure_lines(figures, fig_prefix))


def nc1_trend(collapse: dict[str, Any]) -> float:
    """Spearman rank correlation between epoch and NC1 over the saved checkpoints."""
    rows = collapse["trajectory"]
    return spearman([r["epoch"] for r in rows], [r["nc1"] for r in rows])[0]


COLLAPSE_KEYS = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_equinorm_w", "nc2_equiangular_w", "nc3",
                 "nc4", "test_nc4")


def _collapse_table(c: list[dict[str, Any]]) -> list[str]:
    rows = [[f"`{k}`", _num([r["final"].get(k) for r in c])] for k in COLLAPSE_KEYS]
    rows.append(["Spearman ρ(epoch, NC1)", _num([nc1_trend(r) for r in c], 2)])
    return [f"**Neural collapse at the last checkpoint** (training set without augmentation; K = "
            f"{c[0]['num_classes']}, D = {c[0]['feature_dim']}):", ""] + _table(["metric", "value"], rows) + [""]


def _nc5_table(n: list[dict[str, Any]]) -> list[str]:
    last = max(r["epoch"] for r in n[0]["trajectory"])
    rows = []
    for o in n[0]["ood_sets"]:
        pick = [[r for r in run["trajectory"] if r["epoch"] == last and r["ood_set"] == o][0] for run in n]
        rho = [run["spearman"][o]["nc5_centred_rho"] for run in n]
        rows.append([f"`{o}`", _num([p["nc5"] for p in pick]), _num([p["nc5_centred"] for p in pick]),
                     _mean_std([p["auroc"] for p in pick]), _num(rho, 2)])
    return ([f"**NC5 at the last checkpoint (epoch {last})** and NECO's AUROC (%), with the Spearman correlation "
             "of centred NC5 and AUROC over the checkpoints:", ""]
            + _table(["OOD set", "NC5", "NC5 centred", "NECO AUROC", "ρ(NC5 centred, AUROC)"], rows) + [""])


def _layers_table(lay: list[dict[str, Any]]) -> list[str]:
    rows = []
    for b in range(len(lay[0]["final"])):
        rs = [run["final"][b] for run in lay]
        rows.append([str(rs[0]["block"]), str(rs[0]["channels"]), _num([r["nc1"] for r in rs]),
                     _num([r["cdnv"] for r in rs]), _num([r["nc2_equiangular"] for r in rs]),
                     _mean_std([r["ncc_train"] for r in rs]), _mean_std([r["ncc_test"] for r in rs])])
    return (["**Earlier layers at the last checkpoint** (NCC accuracy in %):", ""]
            + _table(["block", "channels", "NC1", "CDNV", "NC2 equiangular", "NCC train", "NCC test"], rows) + [""])


def collapse_lines(data: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Final-epoch neural-collapse numbers from the ``collapse``, ``nc5`` and ``layers`` metrics."""
    parts = (("collapse", _collapse_table), ("nc5", _nc5_table), ("layers", _layers_table))
    return [line for name, make in parts if data[name] for line in make(data[name])]


def _published_cell(v: Any, std: float | None) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        return f"{v['auroc']:.2f} / {v['fpr95']:.2f}"
    return f"{v:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def literature_lines() -> list[str]:
    """Tables of the published numbers in ``results/published.json``."""
    pub = read_json(artifacts.RESULTS / "published.json")
    if pub is None:
        return []
    out = ["## Published results", ""]
    for entry in pub.values():
        scores = entry["scores"]
        cols = sorted({c for v in scores.values() for c in v if not c.endswith("_std")})
        rows = [[f"`{s}`"] + [_published_cell(scores[s].get(c), scores[s].get(f"{c}_std")) for c in cols]
                for s in _order(scores)]
        pairs = isinstance(next(iter(next(iter(scores.values())).values())), dict)
        out += [f"**{entry['source']}**" + (" (AUROC / FPR95, %)" if pairs else " (AUROC, %)"), ""]
        out += _table(["score"] + [c.replace("_", " ") for c in cols], rows) + [""]
    return out


def _snapshot_lines(info: dict | None, stage_figures: Path | None) -> list[str]:
    """Every committed snapshot but the one this run made (its source is shown already)."""
    out = []
    for snap in sorted(p for p in artifacts.RESULTS.glob("*/") if (p / "run.json").exists()):
        snap_info = read_json(snap / "run.json")
        if info and snap_info["config"] == info["config"]:
            continue
        if stage_figures is not None and (snap / "figures").exists():
            _copy_tree(snap / "figures", stage_figures / snap.name)
        out += _section(f"Snapshot `{snap.name}` (committed)", sorted((snap / "metrics").glob("seed-*")),
                        snap / "figures" if stage_figures is not None else None, f"figures/{snap.name}", snap_info)
    return out


def results_markdown(cfgs: Config | list[Config], stage_figures: Path | None = None) -> str:
    """Markdown of ``book/results.md``: this run (all its seeds), every committed snapshot, the literature.

    Figures are copied under ``stage_figures`` (the staged book's ``book/figures``) when given.
    """
    cfgs = [cfgs] if isinstance(cfgs, Config) else cfgs
    run = RunPaths.of(cfgs[-1])
    lines = ["(results)=", "# Results", "",
             "This page is generated by the runner from the metrics JSON files of the executed notebooks and of the "
             "result snapshots committed under `results/`. Synthetic data sets are named `synthetic-*` everywhere.", ""]
    info = read_json(run.run_json)
    if info and len(cfgs) > 1:
        info["seeds"] = {str(c.seed): None for c in cfgs}
    if stage_figures is not None and run.figures.exists():
        _copy_tree(run.figures, stage_figures / "run")
    lines += _section(f"This run (`{cfgs[-1].profile}` profile)", [RunPaths.of(c).metrics for c in cfgs],
                      run.figures if stage_figures is not None else None, "figures/run", info)
    lines += _snapshot_lines(info, stage_figures) + literature_lines()
    if (REPO_ROOT / "book" / "_comparison_notes.md").exists():
        lines += ["```{include} _comparison_notes.md", "```", ""]
    return "\n".join(lines + ["## References", "", "```{bibliography}", ":filter: docname in docnames", "```", ""])
