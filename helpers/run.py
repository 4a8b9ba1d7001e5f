"""Execute the notebooks with papermill, then build the book from the executed copies.

    python -m helpers.run --profile smoke [-p NAME VALUE ...] [--only 01 02] [--no-book] [--seeds 0 1 2]

``-p NAME VALUE`` is papermill's spelling: every override goes to every notebook's ``parameters`` cell
(values are read as YAML, so ``-p epochs 3`` is an int and ``-p augment true`` a bool). A failing notebook
stops the run with the notebook and cell named, its partly executed copy kept, and no book built.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import ArtifactsError, ensure_writable
from .config import REPO_ROOT, Config, choose_profile, make_config, resolve_device

NOTEBOOKS = ("01_training", "02_ood_scores", "03_neural_collapse", "04_nc5_ood", "05_earlier_layers")
BOOK_FILES = ("_config.yml", "_toc.yml", "references.bib", "book")
MATHJAX = ("es5", "tex-svg.js")


class RunError(RuntimeError):
    """A step of the run failed; the message says which and where to look."""


def parse_overrides(pairs: list[list[str]]) -> dict[str, Any]:
    """``[["epochs", "3"], ...]`` → ``{"epochs": 3}``, values parsed as YAML like papermill does."""
    return {name: yaml.safe_load(value) for name, value in pairs}


def absolute_paths(overrides: dict[str, Any]) -> dict[str, Any]:
    """Make path overrides absolute: the notebooks run in ``notebooks/``, not in the caller's folder."""
    out = dict(overrides)
    for key in ("artifacts", "data_root"):
        if isinstance(out.get(key), str) and out[key]:
            out[key] = str(Path(out[key]).expanduser().resolve())
    folder = out.get("id_dataset")
    if isinstance(folder, str) and folder.startswith("imagefolder:"):
        out["id_dataset"] = "imagefolder:" + str(Path(folder.split(":", 1)[1]).expanduser().resolve())
    return out


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def execute(name: str, out_dir: Path, parameters: dict[str, Any]) -> float:
    """Run one notebook with papermill into ``out_dir``; returns wall seconds or raises :class:`RunError`."""
    import papermill as pm

    src, dst = REPO_ROOT / "notebooks" / f"{name}.ipynb", out_dir / f"{name}.ipynb"
    start = time.perf_counter()
    try:
        pm.execute_notebook(src, dst, parameters=parameters, cwd=str(REPO_ROOT / "notebooks"), progress_bar=True,
                            kernel_name="python3")
    except pm.PapermillExecutionError as err:
        msg = str(err.evalue).splitlines()[0] if err.evalue else ""
        raise RunError(f"notebook {name}.ipynb failed in cell {err.exec_count} ({err.ename}: {msg}); "
                       f"the partly executed notebook is kept at {dst}") from None
    return time.perf_counter() - start


def mathjax_source() -> Path:
    """Where ``make setup`` put MathJax 3 (npm package ``mathjax@3``) for offline equations."""
    for root in (os.environ.get("OODNC_MATHJAX", ""), REPO_ROOT / ".venv" / "npm" / "node_modules" / "mathjax"):
        if root and (Path(root).joinpath(*MATHJAX)).exists():
            return Path(root).joinpath(*MATHJAX)
    raise RunError("MathJax for offline equations is missing; run `make setup` (npm install mathjax@3) "
                   "or set OODNC_MATHJAX to a mathjax@3 package folder.")


def stage_book(stage: Path, executed: Path, cfgs: list[Config]) -> None:
    """Copy the book's sources and the executed notebooks into ``stage``, ready for ``jupyter-book build``;
    the Results chapter is generated there from the metrics of ``cfgs`` (one config per seed)."""
    from .results import results_markdown

    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for item in BOOK_FILES:
        src = REPO_ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, stage / item)
    (stage / "notebooks").mkdir()
    for name in NOTEBOOKS:
        shutil.copy2(executed / f"{name}.ipynb", stage / "notebooks" / f"{name}.ipynb")
    (stage / "book" / "results.md").write_text(results_markdown(cfgs, stage / "book" / "figures"))
    (stage / "_extra" / "mathjax").mkdir(parents=True)
    shutil.copy2(mathjax_source(), stage / "_extra" / "mathjax" / "tex-svg.js")


def build_book(stage: Path) -> Path:
    """``jupyter-book build`` with warnings as errors; returns the HTML folder."""
    cli = "from jupyter_book.cli.main import main; main()"      # jupyter-book 1.x has no ``python -m`` entry
    cmd = [sys.executable, "-c", cli, "build", str(stage), "-W", "--keep-going", "-q"]
    if subprocess.run(cmd).returncode != 0:
        raise RunError(f"the book build failed (warnings are errors); see the messages above, sources in {stage}")
    return stage / "_build" / "html"


def run(profile: str, overrides: dict[str, Any], only: list[str] | None = None, book: bool = True,
        out: Path | None = None, seeds: list[int] | None = None, snapshot: bool | None = None) -> Path:
    """Execute the notebooks in order, once per seed, then build the book; returns the output folder.

    ``snapshot`` (default: on for every profile but ``smoke``) refreshes ``results/<profile>-<id set>/`` from
    the runs, so that the book shows them.
    """
    name, reason = choose_profile(profile)
    if "profile" in overrides:
        raise ValueError(f"the profile is not a parameter; use --profile {overrides['profile']} instead of -p profile.")
    overrides = absolute_paths(overrides)
    seeds = seeds or [make_config(name, **overrides).seed]
    cfgs = [make_config(name, **{**overrides, "seed": s}) for s in seeds]   # fails early on bad parameters
    resolve_device(cfgs[0])                                                # ... on a device that is not there
    for cfg in cfgs:
        ensure_writable(cfg.run_dir())                                     # ... on an unwritable artifacts folder
    chosen = [n for n in NOTEBOOKS if not only or any(n.startswith(o) for o in only)]
    if only and not chosen:
        raise RunError(f"--only {only} matches no notebook; choose from {', '.join(NOTEBOOKS)}.")
    out = out or REPO_ROOT / "_build" / name
    for cfg in cfgs:
        print(f"profile {name} ({reason}), seed {cfg.seed}; artifacts in {cfg.run_dir()}", flush=True)
        executed = out / "executed" if cfg is cfgs[-1] else out / f"executed-seed-{cfg.seed}"
        executed.mkdir(parents=True, exist_ok=True)
        parameters = dict(profile=name, **{**overrides, "seed": cfg.seed})
        times = {}
        for i, nb in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {nb}.ipynb", flush=True)
            times[nb] = round(execute(nb, executed, parameters), 1)
        write_run_json(cfg, times)
    complete = len(chosen) == len(NOTEBOOKS)
    if complete and (snapshot if snapshot is not None else name != "smoke"):
        from .results import write_snapshot

        print(f"snapshot: {write_snapshot(cfgs[-1], seeds, {c.seed: c.run_dir() for c in cfgs})}", flush=True)
    if book and complete:
        stage = out / "book"
        stage_book(stage, out / "executed", cfgs)
        print(f"book: {build_book(stage) / 'index.html'}", flush=True)
    return out


def write_run_json(cfg: Config, times: dict[str, float]) -> Path:
    """Provenance of a run: profile, configuration, commit, date, machine and wall time per notebook."""
    import torch

    path = cfg.run_dir() / "run.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    info = dict(profile=cfg.profile, config=cfg.to_dict(), commit=git_commit(),
                date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                machine=dict(platform=platform.platform(), processor=platform.machine(), cpus=os.cpu_count(),
                             torch=torch.__version__,
                             gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None),
                seconds={**old.get("seconds", {}), **times})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke", help="smoke | cpu | full | auto (default: smoke)")
    parser.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a config field in every notebook (papermill's spelling)")
    parser.add_argument("--only", nargs="+", help="run only these notebooks (by prefix, e.g. 01 02); no book")
    parser.add_argument("--no-book", action="store_true", help="execute the notebooks but do not build the book")
    parser.add_argument("--seeds", nargs="+", type=int, help="run the whole series once per seed")
    parser.add_argument("--out", type=Path, help="output folder (default: _build/<profile>)")
    parser.add_argument("--snapshot", action=argparse.BooleanOptionalAction, default=None,
                        help="refresh results/<profile>-<id set>/ (default: on except for the smoke profile)")
    args = parser.parse_args(argv)
    try:
        run(args.profile, parse_overrides(args.parameters), args.only, book=not args.no_book, out=args.out,
            seeds=args.seeds, snapshot=args.snapshot)
    except (ValueError, RunError, FileNotFoundError, ArtifactsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
