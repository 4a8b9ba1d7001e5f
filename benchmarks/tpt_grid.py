"""What the terminal phase costs on a CPU: one row per training setting of the ``cpu`` profile.

The book's table "How the cpu profile augments and still reaches the terminal phase" (chapter Introduction) is
printed by this script. A setting is a list of ``NAME=VALUE`` overrides of the ``cpu`` profile, e.g. ``augment=true
plain_epochs=12``. Each setting is trained first with ``python -m helpers.run --profile cpu -p NAME VALUE ...
--only 01`` (hours on 2 cores; checkpoints resume); this script then reads its run folder and prints:

- s/epoch: the median over consecutive checkpoints of (time between their writes) / (epochs between them),
  training and the per-epoch evaluation included; a pause between sessions of a resumed run falls out;
- the TPT onset: the first epoch from which the training accuracy on unaugmented batches stays ≥ 99 %, and
  whether the terminal phase holds for the last quarter of the epochs (the profile's criterion);
- the final training and test accuracy;
- the Energy AUROC of the ID test set against Textures (``dtd10``) at the last checkpoint, the score that needs
  no fitting, through :mod:`helpers.features` (cached).

    python benchmarks/tpt_grid.py "" "augment=true plain_epochs=12" "augment=true plain_epochs=8"

(``""`` is the profile as it is.) ``OODNC_ARTIFACTS`` and ``OODNC_DATA`` point at the folders the runs used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from helpers import artifacts, checkpoint, data, features, metrics, ood  # noqa: E402
from helpers.config import make_config  # noqa: E402
from helpers.run import parse_overrides  # noqa: E402

TPT_ACCURACY = 0.99


def settings(text: str) -> dict[str, Any]:
    """``"augment=true plain_epochs=12"`` → ``{"augment": True, "plain_epochs": 12}`` (the runner's -p rules)."""
    pairs = [item.split("=", 1) for item in text.split()]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"error: a setting is NAME=VALUE ...; got {text!r}.")
    return parse_overrides(pairs)


def held_onset(history: list[dict[str, float]], accuracy: float = TPT_ACCURACY) -> int | None:
    """First epoch from which every later epoch has training accuracy ≥ ``accuracy`` (None if the last has not)."""
    onset = None
    for row in history:
        onset = (onset or row["epoch"]) if row["train_acc"] >= accuracy else None
    return onset


def seconds_per_epoch(checkpoints: dict[int, Path]) -> float | None:
    """Median of (mtime difference) / (epoch difference) over consecutive checkpoints (None with fewer than 2)."""
    epochs = sorted(checkpoints)
    rates = [(checkpoints[b].stat().st_mtime - checkpoints[a].stat().st_mtime) / (b - a)
             for a, b in zip(epochs, epochs[1:], strict=False)]
    return statistics.median(rates) if rates else None


def energy_vs_textures(cfg, last: Path) -> float:
    """AUROC of the Energy score, ID test set against ``dtd10``, under the weights of checkpoint ``last``."""
    splits = data.id_splits(cfg)
    sets = {"test": splits.test, "dtd10": data.load("dtd10", "test", cfg)}
    feats = features.at_checkpoint(cfg, last, splits, sets, torch.device("cpu"))
    return metrics.ood_metrics(ood.energy(feats["test"].logits), ood.energy(feats["dtd10"].logits))["auroc"]


def row(text: str) -> dict[str, Any]:
    """The grid row of one setting, from its run folder; a run stopped early (a pilot) is read at its last
    checkpoint and says so."""
    cfg = make_config("cpu", **settings(text))
    paths = artifacts.RunPaths.of(cfg)
    checkpoints = checkpoint.list_checkpoints(paths.checkpoints)
    if not checkpoints:
        flags = " ".join(f"-p {k} {v}" for k, v in settings(text).items())
        raise SystemExit(f"error: {text or 'the cpu profile'} has no checkpoint in {paths.root}; run "
                         f"python -m helpers.run --profile cpu {flags} --only 01")
    last = max(checkpoints)
    history = checkpoint.load(checkpoints[last])["history"]
    onset = held_onset(history)
    name = text or f"the cpu profile (augment={str(cfg.augment).lower()} plain_epochs={cfg.plain_epochs})"
    return dict(setting=name if last == cfg.epochs else f"{name} (pilot, read at epoch {last} of {cfg.epochs})",
                s_per_epoch=seconds_per_epoch(checkpoints), onset=onset,
                held=last == cfg.epochs and onset is not None and onset <= 0.75 * cfg.epochs + 1,
                train_acc=history[-1]["train_acc"], test_acc=history[-1]["test_acc"],
                energy_dtd10=energy_vs_textures(cfg, checkpoints[last]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+", help='overrides of the cpu profile, "NAME=VALUE ..." ("" for none)')
    args = p.parse_args(argv)
    print("| setting | s/epoch | TPT onset (≥ 99 %, held) | held for the last quarter | final train accuracy "
          "| test accuracy | Energy AUROC vs Textures |\n|---|---|---|---|---|---|---|")
    for text in args.settings:
        r = row(text)
        s = f"{r['s_per_epoch']:.0f}" if r["s_per_epoch"] else "?"
        print(f"| {r['setting']} | {s} | {r['onset'] or 'never'} | {'yes' if r['held'] else 'no'} "
              f"| {100 * r['train_acc']:.2f} % | {100 * r['test_acc']:.1f} % | {100 * r['energy_dtd10']:.1f} % |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
