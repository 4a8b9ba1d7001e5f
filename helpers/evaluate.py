"""Evaluate a committed snapshot's network against any OOD set, without retraining.

    python -m helpers.evaluate --snapshot results/cpu-cifar100 [--ood NAME ...] [--json PATH]
                               [--seed S] [--n-boot N] [--data-root PATH] [--device cpu]

NAME is any set name of :mod:`helpers.data` or ``imagefolder:PATH``. The network is rebuilt from the
snapshot's ``weights-seed-<s>.pt`` (a float32 state dict, written by :func:`helpers.results.write_weights`)
and the configuration in its ``run.json``; every score of ``helpers.ood.SCORES`` is then fitted on the ID
training features and KNN's k chosen on held-out data by :func:`helpers.protocol.detect`, the same call as
notebook 02. Without ``--ood`` the snapshot's own OOD sets are used. Prints AUROC and FPR95 (ID positive) with
bootstrap intervals per set and the near/far means (:func:`helpers.protocol.ood_groups`); ``--json`` writes
``{set: {score: {"auroc": …, "fpr95": …, …}}}``.

Any other classifier (the book, page "Use it on your own model"):

    python -m helpers.evaluate --model torchvision:NAME --weights PATH | --model torchscript:PATH | --model helpers:PATH
                               --id NAME --ood NAME [--ood NAME ...] [--near NAME ...] [--far NAME ...]
                               [--val-ood NAME] [--image-size S] [--mean R G B --std R G B] [--feature-layer NAME]
                               [--out DIR] [--batch-size B] [--subset N] [--device auto]

loads the model (:mod:`helpers.own_model`), reads its penultimate features at the linear head in one batched
pass, runs the same :func:`helpers.protocol.detect`, measures NC1-NC4 (``collapse.nc_metrics``) and NC5 on the
ID training features, and writes ``DIR/report.json`` and the self-contained ``DIR/report.html``
(:mod:`helpers.html_report`).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import collapse, data, features, metrics, own_model, plots, protocol
from .artifacts import ArtifactsError, read_json, write_json
from .config import Config, make_config
from .device import eval_batch
from .model import ResNet18, build_model
from .stats import class_means

WEIGHTS = "weights-seed-{seed}.pt"


class SnapshotError(FileNotFoundError):
    """A snapshot folder, its ``run.json`` or its weights are missing; the message says what to do."""


def snapshot_seeds(folder: Path) -> list[int]:
    """Seeds whose weights the snapshot holds, increasing."""
    found = (re.fullmatch(r"weights-seed-(\d+)\.pt", p.name) for p in Path(folder).glob("weights-seed-*.pt"))
    return sorted(int(m.group(1)) for m in found if m)


def snapshot_config(folder: Path, seed: int | None = None, data_root: str = "") -> Config:
    """The configuration a snapshot was trained with (``run.json``), for ``seed`` (default: its first seed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SnapshotError(f"snapshot folder {folder} does not exist; pass --snapshot results/<profile>-<id set>.")
    info, seeds = read_json(folder / "run.json"), snapshot_seeds(folder)
    if info is None or not seeds:
        raise SnapshotError(f"{folder} has no run.json or no {WEIGHTS.format(seed='<s>')}; it is not a snapshot "
                            "with weights (the runner writes them with --snapshot).")
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise SnapshotError(f"{folder} has no weights for seed {seed}; it has seeds {seeds}.")
    fields = {k: v for k, v in info["config"].items() if k != "profile"}
    return make_config(info["profile"], **{**fields, "seed": seed, "artifacts": "", "data_root": data_root,
                                           "eval_batch_size": 0})     # the inference batch: this machine's


def load_network(folder: Path, cfg: Config, device: torch.device) -> ResNet18:
    """The snapshot's network for ``cfg.seed``, in eval mode on ``device``."""
    state = torch.load(Path(folder) / WEIGHTS.format(seed=cfg.seed), map_location="cpu", weights_only=True)
    model = build_model(state["fc.weight"].shape[0], cfg.width, device)
    model.load_state_dict(state)
    return model.eval()


def load_sets(cfg: Config, names: tuple[str, ...]) -> tuple[data.Splits, dict[str, data.ImageSet]]:
    """The ID splits of ``cfg`` and the sets :func:`helpers.protocol.detect` reads (real sets prepared first)."""
    from .sweep import detection_sets

    if not names:
        raise ValueError("no OOD set given; pass --ood NAME (a set name or imagefolder:PATH) at least once.")
    needed = {n: s for n, s in data.sets_of(cfg).items() if n in (cfg.id_dataset, cfg.val_ood_dataset)}
    data.prepare(cfg, needed | {n: ("test",) for n in names if n in data.SOURCES}, quiet=True)
    splits = data.id_splits(cfg)
    return splits, detection_sets(cfg, splits, data.ood_sets(cfg, names))


def evaluate(folder: Path, ood_names: list[str], seed: int | None = None, n_boot: int = metrics.N_BOOT,
             data_root: str = "", device: str = "cpu") -> protocol.Detection:
    """:func:`helpers.protocol.detect` of the snapshot's network against the sets ``ood_names``."""
    cfg = snapshot_config(folder, seed, data_root)
    names = tuple(dict.fromkeys(ood_names))
    splits, sets = load_sets(cfg, names)
    dev = torch.device(device)
    model = load_network(folder, cfg, dev)
    feats = {k: features.extract(model, ds, splits.mean, splits.std, dev, eval_batch(cfg, dev), progress=True)
             for k, ds in sets.items()}
    W, b = model.fc.weight.detach().cpu(), model.fc.bias.detach().cpu()      # (K, D), (K,)
    return protocol.detect(feats, W, b, list(names), cfg.val_ood_dataset, n_boot=n_boot, seed=cfg.seed)


def table(results: protocol.Results, keys: tuple[str, ...] = ("auroc", "fpr95")) -> str:
    """Plain-text table: per OOD set, one line per score with each metric of ``keys`` (%) and its interval."""
    names = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
    lines, sets = [], protocol.by_set(results)
    w = max(len("score"), *(len(s) for per_score in sets.values() for s in per_score))    # the widest score name
    for name, per_score in sets.items():
        header = f"  {'score':<{w}} " + " ".join(f"{names[k] + ' % [95 % CI]':<22}" for k in keys)
        lines += [name, header.rstrip()]
        lines += [f"  {s:<{w}} " + " ".join(f"{protocol.interval(m, k):<22}" for k in keys).rstrip()
                  for s, m in per_score.items()]
    return "\n".join(lines)


def group_lines(groups: dict[str, Any]) -> list[str]:
    """One line per group of OOD sets: its sets and each score's mean AUROC (%), with its bootstrap interval."""
    def auroc(m: dict[str, float]) -> str:
        return protocol.interval(m) if "auroc_low" in m else f"{100 * m['auroc']:.1f}"

    return [f"{g} mean over {', '.join(v['sets'])}: " + ", ".join(f"{s} {auroc(m)}" for s, m in v["mean"].items())
            for g, v in groups.items()]


# ------------------------------------------------------------------------------------ any classifier
@dataclass
class ModelRun:
    """What ``--model`` asks for: the model, its data and the report's options."""

    model: str
    id: str | None = None
    ood: tuple[str, ...] = ()
    groups: dict[str, tuple[str, ...]] | None = None      # e.g. {"near": (...), "far": (...)}
    val_ood: str | None = None
    weights: Path | None = None
    feature_layer: str | None = None
    image_size: int = data.SIZE
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    seed: int | None = None
    n_boot: int = 200
    batch_size: int = 256
    subset: int = 0
    train_subset: int = 0
    data_root: str = ""
    device: str = "auto"


def model_config(run: ModelRun, checkpoint_config: dict[str, Any] | None) -> Config:
    """The run configuration the data come from: a ``helpers:`` checkpoint's own (``--id``, ``--val-ood``,
    ``--seed`` and ``--subset`` override it), else the smoke profile's with the ID set ``--id``."""
    given = {k: v for k, v in dict(id_dataset=run.id, val_ood_dataset=run.val_ood, seed=run.seed).items()
             if v is not None}
    given |= {"ood_subset": run.subset} if run.subset else {}
    given |= {"train_subset": run.train_subset} if run.train_subset else {}
    if checkpoint_config is not None:
        fields = {k: v for k, v in checkpoint_config.items() if k != "profile"}
        return make_config(checkpoint_config["profile"], **{**fields, **given, "artifacts": "",
                                                            "data_root": run.data_root})
    if run.id is None:
        raise ValueError("no ID set given; pass --id NAME (a set name of helpers.data or imagefolder:PATH with "
                         "train/ and test/).")
    return make_config("smoke", **given, data_root=run.data_root)


def check_id_set(name: str) -> None:
    """An ID image folder must hold ``train/`` and ``test/``, each ``<class>/<image>``."""
    if name.startswith("imagefolder:"):
        root = Path(name.split(":", 1)[1]).expanduser()
        missing = [s for s in ("train", "test") if not (root / s).is_dir()]
        if missing:
            raise ValueError(f"ID folder {root} has no {' or '.join(f'{m}/' for m in missing)}; an ID set needs "
                             "PATH/train/<class>/* and PATH/test/<class>/* with the same classes.")


def check_classes(splits: data.Splits, K: int) -> None:
    """The ID set must have the head's K classes, the same in train/ and test/."""
    if splits.train.classes and splits.test.classes and splits.train.classes != splits.test.classes:
        raise ValueError(f"the ID set's train/ and test/ have different classes ({len(splits.train.classes)} vs "
                         f"{len(splits.test.classes)}); give both the same class folders.")
    if splits.num_classes != K or int(splits.test.labels.max()) >= K:
        raise ValueError(f"the ID set has {splits.num_classes} classes but the model's head has K={K} outputs; "
                         "pass the ID set the model was trained on.")


def collapse_report(feats: dict[str, features.Features], W: Tensor, ood_names: list[str]) -> dict[str, Any]:
    """NC1-NC4 on the ID train features (``collapse.nc_metrics``), accuracies on the ID test set with the
    training class means, NC5 (both variants) per OOD set, and the Gram matrices of NC2."""
    train, test, K = feats["train"], feats["test"], W.shape[0]
    h, y = train.features, train.labels.long()                          # (N, D), (N,)
    means = class_means(h, y, K)                                         # (K, D)
    held = collapse.heldout_predictions(test.features, test.labels.long(), means, test.logits)
    nc = collapse.nc_metrics(h, y, W, train.logits) | {f"test_{k}": v for k, v in held.items()}
    nc5 = {n: {"nc5": collapse.nc5(h, y, feats[n].features, K), "nc5_centred": collapse.nc5_centred(
        h, y, feats[n].features, K)} for n in ood_names}
    grams = {"class means": collapse.gram(means, h.mean(0)), "classifier W": collapse.gram(W, torch.zeros(W.shape[1])),
             "simplex ETF": collapse.gram(collapse.simplex_etf(K))}
    return {"collapse": nc, "nc5": nc5, "grams": grams}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .device import resolve_device

    return resolve_device(make_config("smoke", device=name))


FeatureRun = tuple[own_model.Head, data.Splits, dict[str, features.Features], Tensor, Tensor]


def _features(run: ModelRun, cfg: Config, loaded: own_model.Loaded, device: torch.device,
              names: tuple[str, ...]) -> FeatureRun:
    """Head, ID splits, features of every set, and the normalisation (mean, std) used."""
    check_id_set(cfg.id_dataset)
    head = own_model.resolve_head(loaded.model, run.feature_layer)
    splits, sets = load_sets(cfg, names)
    check_classes(splits, head.shape[0])
    mean = splits.mean if run.mean is None else torch.tensor(run.mean)
    std = splits.std if run.std is None else torch.tensor(run.std)
    batch = run.batch_size or eval_batch(cfg, device)
    feats = own_model.extract_all(loaded.model, head, sets, mean, std, device, batch, run.image_size)
    return head, splits, feats, mean, std


def evaluate_model(run: ModelRun) -> tuple[dict[str, Any], protocol.Detection, dict[str, Tensor]]:
    """The report of any classifier: (report dict, the detection, the Gram matrices {name: (K, K)})."""
    device = _device(run.device)
    loaded = own_model.load_model(run.model, run.weights, device)
    cfg = model_config(run, loaded.config)
    groups = run.groups or {}
    names = tuple(dict.fromkeys([*run.ood, *(n for g in groups.values() for n in g)]))
    head, splits, feats, mean, std = _features(run, cfg, loaded, device, names)
    det = protocol.detect(feats, head.W, head.b, list(names), cfg.val_ood_dataset, n_boot=run.n_boot, seed=cfg.seed)
    nc = collapse_report(feats, head.W, list(names))
    report = dict(model=run.model, head=head.head, feature_layer=head.feature, K=head.shape[0], D=head.shape[1],
                  id=cfg.id_dataset, val_ood=cfg.val_ood_dataset, image_size=run.image_size, mean=mean.tolist(),
                  std=std.tolist(), device=str(device), seed=cfg.seed, n_boot=run.n_boot,
                  sizes={k: len(f) for k, f in feats.items()}, ood=protocol.by_set(det.results),
                  groups=protocol.group_means(det.results, groups, replicates=det.replicates),
                  options=det.used, selection=det.selection,
                  collapse=nc["collapse"], nc5=nc["nc5"])
    return report, det, nc["grams"]


def report_figures(det: protocol.Detection, names: list[str], grams: dict[str, Tensor]) -> dict[str, Any]:
    """The figures that need no training trajectory: score histograms, ROC curves per set, Gram matrices."""
    figs = {"Score distributions, ID test and each OOD set": plots.score_histograms(det.raw, protocol.ID_TEST, names)}
    figs |= {f"ROC curves, ID test vs {n}": plots.roc_curves(det.raw, protocol.ID_TEST, n) for n in names}
    figs["Cosine Gram matrices: class means, classifier rows, simplex ETF (NC2)"] = plots.gram_heatmaps(grams)
    return figs


def write_report(out: Path, report: dict[str, Any], det: protocol.Detection, grams: dict[str, Tensor]) -> list[Path]:
    """``out/report.json`` and the self-contained ``out/report.html``."""
    from . import html_report

    names = list(report["ood"])
    json_path = write_json(Path(out) / "report.json", report)
    return [json_path, html_report.write(Path(out) / "report.html", report, report_figures(det, names, grams))]


def summary_lines(report: dict[str, Any], results: protocol.Results) -> list[str]:
    """What the command prints: the model line, the OOD table (with AUPR), group means and the NC numbers."""
    size = f"{report['image_size']}x{report['image_size']}"
    head = (f"{report['model']}: head {report['head']} (K={report['K']}, D={report['D']}), ID {report['id']}, "
            f"features at {report['feature_layer']}, {size} on {report['device']}")
    lines = [head, table(results, ("auroc", "fpr95", "aupr_in", "aupr_out"))]
    lines += group_lines(report["groups"])
    nc = report["collapse"]
    lines.append("collapse: " + ", ".join(f"{k} {nc[k]:.4g}" for k in ("nc1", "nc2_equinorm", "nc2_equiangular",
                                                                       "nc3", "nc4", "accuracy", "test_accuracy")))
    lines += [f"NC5 {n}: {v['nc5']:.4g} (centred {v['nc5_centred']:.4g})" for n, v in report["nc5"].items()]
    return lines


def parser() -> argparse.ArgumentParser:
    """The command line: ``--snapshot`` (a committed snapshot) or ``--model`` (any classifier)."""
    p = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--snapshot", type=Path, help="a folder results/<profile>-<id set>")
    which.add_argument("--model", help="torchvision:NAME (with --weights), torchscript:PATH or helpers:PATH")
    p.add_argument("--ood", action="append", default=[], metavar="NAME",
                   help="an OOD set name or imagefolder:PATH (repeat for several; --snapshot: default its own)")
    p.add_argument("--json", type=Path, help="--snapshot: write {set: {score: metrics}} to this file")
    p.add_argument("--seed", type=int, help="which seed's weights (default: the first in the snapshot)")
    p.add_argument("--n-boot", type=int, default=metrics.N_BOOT,
                   help=f"bootstrap replicates per interval (default {metrics.N_BOOT})")
    p.add_argument("--data-root", default="", help="where data sets are prepared (default: $OODNC_DATA)")
    p.add_argument("--device", help="cpu | cuda | cuda:N | auto (default: cpu with --snapshot, auto with --model)")
    m = p.add_argument_group("--model")
    m.add_argument("--weights", type=Path, help="torchvision: the state dict (K is read from its last layer)")
    m.add_argument("--id", help="the ID set: a set name or imagefolder:PATH with train/ and test/")
    m.add_argument("--near", action="append", default=[], metavar="NAME", help="a near-OOD set (averaged as a group)")
    m.add_argument("--far", action="append", default=[], metavar="NAME", help="a far-OOD set (averaged as a group)")
    m.add_argument("--val-ood", help="the OOD set KNN's k is chosen on (default: synthetic-near-val)")
    m.add_argument("--image-size", type=int, default=data.SIZE, help="resize the 32x32 images to S (default 32)")
    m.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the ID training set's)")
    m.add_argument("--std", type=float, nargs=3, help="normalisation std (default: the ID training set's)")
    m.add_argument("--feature-layer", help="the linear head (its input is h) or the layer right before it")
    m.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    m.add_argument("--subset", type=int, default=0, help="at most N images per OOD set (default: all)")
    m.add_argument("--train-subset", type=int, default=0, help="a class-balanced subset of N ID training images")
    m.add_argument("--out", type=Path, default=Path("own-model-report"), help="folder of report.json/.html")
    return p


def _run_model(args: argparse.Namespace) -> None:
    groups = {"near": tuple(args.near), "far": tuple(args.far)} if args.near or args.far else None
    if args.image_size < 1 or args.batch_size < 1 or min(args.subset, args.train_subset) < 0:
        raise ValueError("--image-size and --batch-size must be positive, --subset and --train-subset >= 0.")
    run = ModelRun(args.model, args.id, tuple(args.ood), groups, args.val_ood, args.weights, args.feature_layer,
                   args.image_size, args.mean and tuple(args.mean), args.std and tuple(args.std), args.seed,
                   args.n_boot, args.batch_size, args.subset, args.train_subset, args.data_root,
                   args.device or "auto")
    report, det, grams = evaluate_model(run)
    print("\n".join(summary_lines(report, det.results)))
    for path in write_report(args.out, report, det, grams):
        print(f"wrote {path}")


def _run_snapshot(args: argparse.Namespace) -> None:
    cfg = snapshot_config(args.snapshot, args.seed, args.data_root)
    names = list(dict.fromkeys(args.ood or cfg.ood_datasets))            # default: the snapshot's own OOD sets
    det = evaluate(args.snapshot, names, args.seed, args.n_boot, args.data_root, args.device or "cpu")
    groups = protocol.group_means(det.results, protocol.ood_groups(cfg.id_dataset, names), replicates=det.replicates)
    print("\n".join([table(det.results), *group_lines(groups)]))
    if args.json:
        print(f"wrote {write_json(args.json, protocol.by_set(det.results))}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        (_run_snapshot if args.snapshot is not None else _run_model)(args)
    except (ValueError, FileNotFoundError, ArtifactsError, RuntimeError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
