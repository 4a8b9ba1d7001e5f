"""Evaluate a committed snapshot's network against any OOD set, without retraining.

    python -m helpers.evaluate --snapshot results/cpu-cifar100 --ood NAME [--ood NAME ...] [--json PATH]
                               [--seed S] [--n-boot N] [--data-root PATH] [--device cpu]

NAME is any set name of :mod:`helpers.data` or ``imagefolder:PATH``. The network is rebuilt from the
snapshot's ``weights-seed-<s>.pt`` (a float32 state dict, written by :func:`helpers.results.write_weights`)
and the configuration in its ``run.json``; every score of ``helpers.ood.SCORES`` is then fitted on the ID
training features and KNN's k chosen on held-out data by :func:`helpers.protocol.detect`, the same call as
notebook 02. Prints AUROC and FPR95 (ID positive) with bootstrap intervals per set; ``--json`` writes
``{set: {score: {"auroc": …, "fpr95": …, …}}}``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from . import data, features, protocol
from .artifacts import ArtifactsError, read_json, write_json
from .config import Config, make_config
from .model import ResNet18, build_model

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
    return make_config(info["profile"], **{**fields, "seed": seed, "artifacts": "", "data_root": data_root})


def load_network(folder: Path, cfg: Config, device: torch.device) -> ResNet18:
    """The snapshot's network for ``cfg.seed``, in eval mode on ``device``."""
    state = torch.load(Path(folder) / WEIGHTS.format(seed=cfg.seed), map_location="cpu", weights_only=True)
    model = build_model(state["fc.weight"].shape[0], cfg.width, device)
    model.load_state_dict(state)
    return model.eval()


def evaluate(folder: Path, ood_names: list[str], seed: int | None = None, n_boot: int = 200, data_root: str = "",
             device: str = "cpu") -> protocol.Detection:
    """:func:`helpers.protocol.detect` of the snapshot's network against the sets ``ood_names``."""
    from .sweep import detection_sets

    cfg = snapshot_config(folder, seed, data_root)
    if not ood_names:
        raise ValueError("no OOD set given; pass --ood NAME (a set name or imagefolder:PATH) at least once.")
    names = tuple(dict.fromkeys(ood_names))
    needed = {n: s for n, s in data.sets_of(cfg).items() if n in (cfg.id_dataset, cfg.val_ood_dataset)}
    data.prepare(cfg, needed | {n: ("test",) for n in names if n in data.SOURCES}, quiet=True)
    splits = data.id_splits(cfg)
    sets = detection_sets(cfg, splits, data.ood_sets(cfg, names))
    dev = torch.device(device)
    model = load_network(folder, cfg, dev)
    feats = {k: features.extract(model, ds, splits.mean, splits.std, dev, cfg.eval_batch_size, progress=True)
             for k, ds in sets.items()}
    W, b = model.fc.weight.detach().cpu(), model.fc.bias.detach().cpu()      # (K, D), (K,)
    return protocol.detect(feats, W, b, list(names), cfg.val_ood_dataset, n_boot=n_boot, seed=cfg.seed)


def table(results: protocol.Results) -> str:
    """Plain-text table: per OOD set, one line per score with AUROC and FPR95 (%) and their intervals."""
    lines = []
    for name, per_score in protocol.by_set(results).items():
        lines += [f"{name}", f"  {'score':<12} {'AUROC % [95 % CI]':<22} {'FPR95 % [95 % CI]':<22}"]
        lines += [f"  {s:<12} {protocol.interval(m, 'auroc'):<22} {protocol.interval(m, 'fpr95'):<22}"
                  for s, m in per_score.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshot", type=Path, required=True, help="a folder results/<profile>-<id set>")
    parser.add_argument("--ood", action="append", default=[], metavar="NAME",
                        help="an OOD set name or imagefolder:PATH (repeat for several)")
    parser.add_argument("--json", type=Path, help="write {set: {score: metrics}} to this file")
    parser.add_argument("--seed", type=int, help="which seed's weights (default: the first in the snapshot)")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates per interval (default 200)")
    parser.add_argument("--data-root", default="", help="where data sets are prepared (default: $OODNC_DATA)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    args = parser.parse_args(argv)
    try:
        det = evaluate(args.snapshot, args.ood, args.seed, args.n_boot, args.data_root, args.device)
        print(table(det.results))
        if args.json:
            print(f"wrote {write_json(args.json, protocol.by_set(det.results))}")
    except (ValueError, FileNotFoundError, ArtifactsError, RuntimeError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
