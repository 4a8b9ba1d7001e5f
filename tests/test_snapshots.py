"""The committed result snapshots under ``results/``: complete, from a clean tree, and rendered by the Results page.

Every folder ``results/<profile>-<id set>/`` with a ``run.json`` is checked: its commit is a clean commit of
this repository, every seed has its five metrics files and its float32 weights (at most 4 MB, loadable into the
network of its configuration), the training reached the terminal phase and held it for the last quarter, the OOD
metrics cover every score and every OOD set of the profile, and :func:`helpers.results.results_markdown` renders
its tables and figures. Where the ID data is in ``../shared`` (CI has it), the committed weights must reproduce
the recorded ID test accuracy: they are the weights of the run the metrics describe.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import artifacts, data, evaluate, results, train
from helpers.config import REPO_ROOT
from helpers.device import eval_batch
from helpers.ood import SCORES

SNAPSHOTS = sorted(p.parent for p in artifacts.RESULTS.glob("*/run.json"))
HEADLINE = artifacts.RESULTS / "cpu-cifar100"


def _seeds(folder: Path) -> list[int]:
    return sorted(int(s) for s in artifacts.read_json(folder / "run.json")["seeds"])


def test_the_headline_snapshot_is_committed() -> None:
    assert HEADLINE in SNAPSHOTS, f"{HEADLINE} is missing: python -m helpers.run --profile cpu writes it"
    assert len(_seeds(HEADLINE)) >= 2, "the cpu-cifar100 snapshot should hold at least two seeds"


@pytest.mark.parametrize("folder", SNAPSHOTS, ids=lambda p: p.name)
def test_snapshot_comes_from_a_clean_commit_of_this_repository(folder: Path) -> None:
    info = artifacts.read_json(folder / "run.json")
    for commit in {info["commit"], *info.get("commits", {}).values()}:        # one per seed when they differ
        assert re.fullmatch(r"[0-9a-f]{7,40}", commit), f"{folder.name}/run.json has commit {commit!r} (dirty)"
        git = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO_ROOT, capture_output=True)
        if git.returncode != 0 and (REPO_ROOT / ".git" / "shallow").exists():
            pytest.skip("shallow clone: the snapshot's commit may be outside the fetched history")
        assert git.returncode == 0, f"{folder.name} was made at commit {commit}, which is not in this repository"


@pytest.mark.parametrize("folder", SNAPSHOTS, ids=lambda p: p.name)
def test_every_seed_has_its_metrics_and_small_float32_weights(folder: Path) -> None:
    cfg = evaluate.snapshot_config(folder)
    assert evaluate.snapshot_seeds(folder) == _seeds(folder)
    for seed in _seeds(folder):
        assert sorted(p.stem for p in (folder / "metrics" / f"seed-{seed}").glob("*.json")) == sorted(results.NAMES)
        path = folder / results.WEIGHTS.format(seed=seed)
        assert path.stat().st_size <= results.MAX_WEIGHTS_BYTES
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
        model = evaluate.load_network(folder, evaluate.snapshot_config(folder, seed), torch.device("cpu"))  # strict
        collapse = artifacts.read_json(folder / "metrics" / f"seed-{seed}" / "collapse.json")
        assert model.fc.weight.shape == (collapse["num_classes"], collapse["feature_dim"]) and model.width == cfg.width


@pytest.mark.parametrize("folder", SNAPSHOTS, ids=lambda p: p.name)
def test_training_held_the_terminal_phase_for_the_last_quarter(folder: Path) -> None:
    for seed in _seeds(folder):
        t = artifacts.read_json(folder / "metrics" / f"seed-{seed}" / "training.json")
        last_quarter = [h for h in t["history"] if h["epoch"] > 0.75 * t["epochs"]]
        assert last_quarter and min(h["train_acc"] for h in last_quarter) >= 0.99, f"seed {seed}"
        assert t["history"][-1]["epoch"] == t["epochs"]


@pytest.mark.parametrize("folder", SNAPSHOTS, ids=lambda p: p.name)
def test_ood_metrics_cover_every_score_and_set(folder: Path) -> None:
    cfg = evaluate.snapshot_config(folder)
    for seed in _seeds(folder):
        ood = artifacts.read_json(folder / "metrics" / f"seed-{seed}" / "ood.json")
        assert set(ood["ood_sets"]) == set(cfg.ood_datasets)
        for name in SCORES:
            for s in cfg.ood_datasets:
                auroc = ood["results"][name][s]["auroc"]
                assert 0.0 <= auroc <= 1.0, (name, s, auroc)


@pytest.mark.parametrize("folder", SNAPSHOTS, ids=lambda p: p.name)
def test_results_page_renders_the_snapshot_tables_and_figures(folder: Path, tmp_path: Path) -> None:
    cfg = evaluate.snapshot_config(folder)
    page = results.results_markdown(dataclasses.replace(cfg, artifacts=str(tmp_path / "none")), stage_figures=tmp_path)
    section = page.split(f"## Snapshot `{folder.name}` (committed)", 1)
    assert len(section) == 2, f"the Results page has no section for {folder.name}"
    body = section[1].split("\n## ", 1)[0]
    for s in cfg.ood_datasets:
        assert re.search(rf"\|\s*`?{re.escape(s)}`?\s*\|", body), f"no row or column for {s}"
    if len(_seeds(folder)) > 1:
        assert "±" in body, "several seeds but no mean ± std"
    shown = re.findall(rf"```{{figure}} figures/{folder.name}/(\S+)", body)
    assert sorted(shown) == sorted(p.name for p in (folder / "figures").iterdir())
    assert all((tmp_path / folder.name / f).is_file() for f in shown)
    for f in shown:
        assert results.FIGURES.get(Path(f).stem, "?") in body, f"{f} has no caption of results.FIGURES"


def test_headline_weights_reproduce_the_recorded_test_accuracy() -> None:
    cfg = evaluate.snapshot_config(HEADLINE)
    try:
        data.prepare(cfg, {cfg.id_dataset: ("train", "test")}, quiet=True)
    except data.DataNotFoundError as e:
        pytest.skip(f"ID data not available here: {e}")
    splits = data.id_splits(cfg)
    cpu = torch.device("cpu")
    model = evaluate.load_network(HEADLINE, cfg, cpu)
    _, acc = train.evaluate(model, splits.test, (splits.mean, splits.std), cpu, eval_batch(cfg, cpu))
    recorded = artifacts.read_json(HEADLINE / "metrics" / f"seed-{cfg.seed}" / "training.json")["test_acc"]
    assert acc == pytest.approx(recorded, abs=2e-4)


def _span(values: list[float], digits: int, scale: float = 1.0) -> str:
    """``"a–b"`` as the exercises write a range over seeds (one value when the seeds agree to ``digits``)."""
    lo, hi = (f"{scale * v:.{digits}f}" for v in (min(values), max(values)))
    return lo if lo == hi else f"{lo}–{hi}"


def _markdown(notebook: str) -> str:
    nb = json.loads((REPO_ROOT / "notebooks" / notebook).read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def test_exercise_answers_quote_the_headline_snapshot() -> None:
    """The expected values printed in the exercises of notebooks 02 and 03 are the snapshot's own numbers."""
    seeds = [HEADLINE / "metrics" / f"seed-{s}" for s in _seeds(HEADLINE)]
    ood = [artifacts.read_json(p / "ood.json") for p in seeds]
    nc = [{r["epoch"]: r for r in artifacts.read_json(p / "collapse.json")["trajectory"]} for p in seeds]
    onsets = {artifacts.read_json(p / "collapse.json")["tpt_onset"] for p in seeds}
    vs_id = [v["auroc"] for o in ood for v in o["id_vs_id"]["scores"].values()]
    kept = [f"$d = {o['hyperparameters']['neco']['dim']}$ (seed {s})" for s, o in zip(_seeds(HEADLINE), ood,
                                                                                        strict=True)]
    expected = {
        "02_ood_scores.ipynb": [
            *(f"{label} AUROC is {_span([o['average'][s]['auroc'] for o in ood], 1, 100)} %" for label, s in
              [("Max Logit's", "maxlogit")]),
            f"$T = 1$ {_span([o['average']['energy']['auroc'] for o in ood], 1, 100)} %",
            f"MSP's {_span([o['average']['msp']['auroc'] for o in ood], 1, 100)} %",
            ", ".join(kept[:-1]) + f" and {kept[-1]}",
            f"deviation is {_span([o['id_vs_id']['null_sd'] for o in ood], 2, 100)} points",
            f"between {100 * min(vs_id):.1f} % and {100 * max(vs_id):.1f} %"],
        "03_neural_collapse.ipynb": [
            f"the TPT starts at epoch {onsets.pop()}",
            *(f"{_span([n[e]['nc1'] for n in nc], 1)} at epoch {e}" for e in (15, 20, 30)),
            "from {} to {}".format(*(_span([n[e]["nc2_equiangular"] for n in nc], 3) for e in (20, 30))),
            f"training NC4 is {_span([n[30]['nc4'] for n in nc], 4)}",
            f"test NC4 {_span([n[30]['test_nc4'] for n in nc], 3)}"]}
    for notebook, phrases in expected.items():
        text = _markdown(notebook)
        missing = [p for p in phrases if p not in text]
        assert not missing, f"{notebook}: the exercises should quote {missing} (from {HEADLINE.name}); update them"


def test_the_pages_that_describe_the_cpu_profile_and_its_snapshot_agree_with_them() -> None:
    """Hand-written rows that describe the ``cpu`` profile (README, Introduction) or the headline snapshot (the
    comparison notes of the Results chapter): their augmentation and accuracy words follow the configuration."""
    from helpers.config import make_config

    profile = make_config("cpu").to_dict()
    snapshot = artifacts.read_json(HEADLINE / "run.json")["config"]
    accuracy = 100 * sum(artifacts.read_json(HEADLINE / "metrics" / f"seed-{s}" / "training.json")["test_acc"]
                         for s in _seeds(HEADLINE)) / len(_seeds(HEADLINE))
    rows = {"README.md": (profile, "| `cpu` |"), "book/intro.md": (profile, "| `cpu` | CIFAR-100"),
            "book/_comparison_notes.md": (snapshot, "| training data |")}
    for page, (config, start) in rows.items():
        [row] = [line for line in (REPO_ROOT / page).read_text().splitlines() if line.startswith(start)]
        assert ("no augmentation" in row) == (not config["augment"]), f"{page}: {row[:50]}... wrong augmentation"
    notes = (REPO_ROOT / "book" / "_comparison_notes.md").read_text()
    assert f"about {accuracy:.0f} %" in notes, f"book/_comparison_notes.md should quote the accuracy {accuracy:.1f} %"
