"""The Summary page, ``book/summary.md``: the findings of the headline snapshot, in sentences computed from it.

    python -m helpers.summary            # print the page
    python -m helpers.summary --write    # rewrite book/summary.md from results/cpu-cifar100

A test checks that the committed page equals what this module renders, so a new snapshot cannot leave stale
numbers on it. Figures are given per seed, joined by " / " in seed order; AUROC and accuracies are in %.
"""

from __future__ import annotations

import argparse
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any

from . import artifacts
from .artifacts import read_json, write_text
from .config import REPO_ROOT
from .results import NAMES, beside_published, published_entries
from .stats import spearman

HEADLINE = artifacts.RESULTS / "cpu-cifar100"
PAGE = REPO_ROOT / "book" / "summary.md"
FAR_FROM_LIMIT = 0.1     # NC2 equiangularity and NC3 above this: collapse has started, not finished (limit 0)

Runs = dict[str, list[dict[str, Any]]]


def _sig(x: float, digits: int = 2) -> str:
    """``digits`` significant figures, but whole numbers kept whole: 236 → "236", 7.83 → "7.8", 0.142 → "0.14"."""
    if isinstance(x, int) or x == 0 or not math.isfinite(x):
        return f"{x:g}"
    return f"{x:.{max(digits - 1 - math.floor(math.log10(abs(x))), 0)}f}"


def _per_seed(values: list[float], fmt=_sig) -> str:
    return " / ".join(fmt(v) for v in values)


def _pct(values: list[float], digits: int = 1) -> str:
    return _per_seed(values, lambda v: f"{100 * v:.{digits}f}") + " %"


def _and(items: list[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return " and ".join(filter(None, [", ".join(items[:-1]), items[-1]])) if items else ""


def _label(name: str) -> str:
    from .plots import label  # matplotlib only when a page is rendered

    return label(name)


def load(folder: Path) -> tuple[dict[str, Any], Runs]:
    """``run.json`` of a snapshot and its metrics, ``{name: [one dict per seed, in seed order]}``."""
    info = read_json(folder / "run.json")
    seeds = sorted(int(s) for s in info["seeds"])
    return info, {n: [read_json(folder / "metrics" / f"seed-{s}" / f"{n}.json") for s in seeds] for n in NAMES}


def setting(config: dict[str, Any]) -> str:
    """What was trained, in words: width, epochs and the augmentation schedule."""
    epochs, plain = config["epochs"], config.get("plain_epochs", 0)
    if not config["augment"]:
        schedule = "without augmentation"
    elif plain:
        schedule = f"with augmentation for epochs 1–{epochs - plain} and without it for the last {plain}"
    else:
        schedule = "with augmentation throughout"
    return f"a width-{config['width']} ResNet-18 trained {epochs} epochs {schedule}"


def id_source(info: dict[str, Any]) -> str:
    """The ID set's origin as ``run.json`` records it (older snapshots did not record it)."""
    name = info["config"]["id_dataset"]
    where = info.get("data", {}).get(f"{name} (train)")
    if where is None:
        from .data import SOURCES

        known = SOURCES[name].what if name in SOURCES else "a set of helpers.data"
        return f"`{name}` ({known}; which one this snapshot read is not recorded in its `run.json`)"
    split = "a seeded re-split, not the official split" if "re-split" in where else "the official split"
    return f"`{name}` ({split}; read from {where.split(' (')[0]})"


def training_finding(t: list[dict[str, Any]], published_accuracy: float | None) -> str:
    """Terminal-phase onset, final training and test accuracy, beside the published network's accuracy."""
    onsets = [r["tpt_onset"] for r in t]
    if None in onsets:
        tpt = "The terminal phase (training accuracy ≥ 99 %) is not reached in every seed"
    else:
        when = f"epoch {onsets[0]} in every seed" if len(set(onsets)) == 1 else f"epochs {_per_seed(onsets)}"
        tpt = f"The terminal phase (training accuracy ≥ 99 %) starts at {when}"
    text = (f"**Training.** {tpt}; training accuracy ends at {_pct([r['train_acc'] for r in t], 2)}. "
            f"ID test accuracy is {_pct([r['test_acc'] for r in t])}")
    if published_accuracy is not None:
        gap = published_accuracy - 100 * statistics.mean(r["test_acc"] for r in t)
        text += (f", {abs(gap):.0f} points {'below' if gap > 0 else 'above'} the {published_accuracy} % of "
                 "OpenOOD v1.5's full-width, augmented ResNet-18")
    return text + "."


def group_aurocs(ood: list[dict[str, Any]], group: str) -> dict[str, list[float]]:
    """Per score, the AUROC averaged over the group's OOD sets, one value per seed, best score first."""
    per = {s: [r["groups"][group]["mean"][s]["auroc"] for r in ood] for s in ood[0]["results"]}
    return dict(sorted(per.items(), key=lambda kv: -statistics.mean(kv[1])))


def scores_finding(ood: list[dict[str, Any]]) -> str:
    """The leading and the last score of each OOD group (near, far)."""
    parts = []
    for group in [g for g in ("near", "far") if g in ood[0]["groups"]]:
        ranked = list(group_aurocs(ood, group).items())
        lead = _and([f"{_label(s)} {_pct(v)}" for s, v in ranked[:3]])
        sets = ", ".join(f"`{s}`" for s in ood[0]["groups"][group]["sets"])
        parts.append(f"{group.capitalize()} OOD ({sets}): {lead} lead, {_label(ranked[-1][0])} is last "
                     f"({_pct(ranked[-1][1])}).")
    return "**Scores** (AUROC averaged over each group's sets; * marks the optional scores). " + " ".join(parts)


def _agreement(rho: float) -> str:
    return "nearly the same" if rho >= 0.8 else "a similar" if rho >= 0.5 else "a different"


def openood_entry(id_set: str) -> dict[str, Any] | None:
    """OpenOOD v1.5's entry of ``results/published.json`` for ``id_set``, if there is one."""
    return next((e for key, (_, e) in published_entries(id_set).items() if key.startswith("openood")), None)


def published_finding(ood: list[dict[str, Any]]) -> str:
    """How far below OpenOOD v1.5's rows the scores lie, and whether they come in the same order (Spearman ρ)."""
    entry = openood_entry(ood[0]["id_set"])
    if entry is None:
        return ""
    common, ours, theirs = beside_published(ood, entry, by_group=True)
    gaps = {(g, s): theirs[g][s] - 100 * ours[g][s] for g in ours for s in common}
    worst = max(gaps, key=gaps.get)
    rho = {g: spearman([ours[g][s] for s in common], [theirs[g][s] for s in common])[0] for g in ours}
    low, high = min(gaps.values()), max(gaps.values())
    span = (f"{low:.0f} to {high:.0f} AUROC points below" if low > 0
            else f"between {-low:.0f} points above and {high:.0f} points below")
    order = _and([f"{_agreement(r)} order on {g} OOD (Spearman ρ = {r:.2f})" for g, r in rho.items()])
    return (f"Beside OpenOOD v1.5's ResNet-18 rows for the same ID set, the {len(common)} scores both report are "
            f"{span} ({_label(worst[1])} loses most, on {worst[0]} OOD), and they come in {order}; "
            "our far sets differ from OpenOOD's.")


def collapse_finding(c: list[dict[str, Any]]) -> str:
    """NC1's fall from the first to the last checkpoint, NC4 on train and test, and how far NC2 and NC3 got."""
    first, last = [r["trajectory"][0] for r in c], [r["final"] for r in c]
    nc1_first, nc1_last = [r["nc1"] for r in first], [r["nc1"] for r in last]
    fold = statistics.mean(nc1_first) / statistics.mean(nc1_last)
    nc2, nc3 = [r["nc2_equiangular"] for r in last], [r["nc3"] for r in last]
    far = min(nc2 + nc3) > FAR_FROM_LIMIT
    return (f"**Where collapse starts.** NC1 falls {fold:.0f}-fold, from {_per_seed(nc1_first)} at epoch "
            f"{first[0]['epoch']} to {_per_seed(nc1_last)} at epoch {last[0]['epoch']}. The nearest class mean "
            f"disagrees with the network on {_pct([r['nc4'] for r in last])} of the training images (NC4) and on "
            f"{_pct([r['test_nc4'] for r in last])} of the test images. NC2 equiangularity ends at "
            f"{_per_seed(nc2)} and NC3 at {_per_seed(nc3)}, "
            + ("far from their limit of 0: the run reaches the start of collapse, not its end."
               if far else "close to their limit of 0."))


def nc5_finding(n: list[dict[str, Any]], alpha: float = 0.05) -> str:
    """Per OOD set, the sign of Spearman ρ between the centred NC5 and NECO's AUROC over the checkpoints, where it
    is the same and significant (p < ``alpha``) in every seed; NECO's argument predicts ρ < 0."""
    sets = n[0]["ood_sets"]
    rho = {s: [r["spearman"][s]["nc5_centred_rho"] for r in n] for s in sets}
    sure = {s for s in sets if max(r["spearman"][s]["nc5_centred_p"] for r in n) < alpha}
    against = [s for s in sets if s in sure and max(rho[s]) < 0]
    along = [s for s in sets if s in sure and min(rho[s]) > 0]
    unclear = [s for s in sets if s not in against and s not in along]

    def listed(names: list[str]) -> str:
        return _and([f"`{s}` (ρ = {_per_seed(rho[s], lambda v: f'{v:.2f}')})" for s in names])

    found = [f"{what} for {listed(names)}" for what, names in (
        (f"significantly negative (p < {alpha} in every seed)", against), ("significantly positive", along),
        ("not significant with one sign in every seed", unclear)) if names]
    return (f"**NC5 and NECO.** Over the {n[0]['spearman'][sets[0]]['n']} checkpoints NECO's argument predicts that "
            f"its AUROC rises as the centred NC5 falls (Spearman ρ < 0). ρ is " + "; ".join(found)
            + f". On this network the NC5 story of NECO holds for {len(against)} of {len(sets)} OOD sets.")


def layers_finding(lay: list[dict[str, Any]]) -> str:
    """CDNV of the first and last block at the last checkpoint, where it drops most, and which blocks are wide."""
    K = lay[0]["num_classes"]
    final = [{r["block"]: r for r in run["final"]} for run in lay]
    blocks = sorted(final[0])
    cdnv = {b: [f[b]["cdnv"] for f in final] for b in blocks}
    drop = {b: statistics.mean(cdnv[b - 1]) / statistics.mean(cdnv[b]) for b in blocks[1:]}
    steepest = sorted(sorted(drop, key=drop.get)[-2:])
    falling = all(d > 1 for d in drop.values())
    wide = [b for b in blocks if final[0][b]["channels"] >= K - 1]
    return (f"**Earlier layers.** At the last checkpoint the CDNV goes from {_per_seed(cdnv[blocks[0]])} (block "
            f"{blocks[0]}) to {_per_seed(cdnv[blocks[-1]])} (block {blocks[-1]})"
            + (", falling block by block" if falling else ", not monotonically")
            + f"; it drops most into blocks {steepest[0]} and {steepest[1]}. "
            + (f"Blocks {_and([str(b) for b in wide])} are the only ones with at least K − 1 = {K - 1} channels, one "
               "per class-mean direction." if wide else f"No block has K − 1 = {K - 1} channels."))


INTRO = ("One page of findings; the numbers of the rendered run and of the committed snapshot are in {ref}`results`, "
         "and each notebook ends with sentences generated from the run it shows. This page is generated from the "
         "committed snapshot by `python -m helpers.summary --write`; a test checks that it is current.")


def summary_markdown(folder: Path = HEADLINE) -> str:
    """The Summary page for the snapshot in ``folder``."""
    info, runs = load(folder)
    openood = openood_entry(runs["ood"][0]["id_set"])
    seeds = sorted(info["seeds"], key=int)
    head = (f"**The committed real run** (`results/{folder.name}`: the `{info['profile']}` profile, "
            f"{setting(info['config'])} on {id_source(info)}; seeds {_and(seeds)}) reads as follows. "
            f"Figures are {' / '.join(f'seed {s}' for s in seeds)}.")
    bullets = [training_finding(runs["training"], openood["setup"]["id_test_accuracy_percent"] if openood else None),
               " ".join(filter(None, [scores_finding(runs["ood"]), published_finding(runs["ood"])])),
               collapse_finding(runs["collapse"]), nc5_finding(runs["nc5"]), layers_finding(runs["layers"])]
    wrap = dict(width=116, break_long_words=False, break_on_hyphens=False)
    lines = ["(summary)=", "# Summary of the results", "", textwrap.fill(INTRO, **wrap), "",
             textwrap.fill(head, **wrap), ""]
    return "\n".join(lines + [textwrap.fill(b, initial_indent="- ", subsequent_indent="  ", **wrap)
                              for b in bullets]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshot", type=Path, default=HEADLINE, help="snapshot folder (default: %(default)s)")
    parser.add_argument("--write", action="store_true", help=f"rewrite {PAGE.relative_to(REPO_ROOT)}")
    args = parser.parse_args(argv)
    page = summary_markdown(args.snapshot)
    if args.write:
        print(f"wrote {write_text(PAGE, page)}")
    else:
        print(page, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
