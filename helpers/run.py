"""Execute the notebooks with papermill, then build the book from the executed copies.

    python -m helpers.run --profile smoke [-p NAME VALUE ...] [--only 01 02] [--no-book] [--seeds 0 1 2]
                          [--jobs 2]

``-p NAME VALUE`` is papermill's spelling: every override goes to every notebook's ``parameters`` cell
(values are read as YAML, so ``-p epochs 3`` is an int and ``-p augment true`` a bool). A failing notebook
stops the run with the notebook and cell named, its partly executed copy kept, and no book built. The
notebooks' output (training progress included) streams to the terminal while they run.

The run holds the lock of its artifacts folder (:func:`helpers.artifacts.run_lock`): a second run on the same
folder stops with one line naming the holder, or queues behind it with ``--wait-for-lock``. Ctrl-C (SIGINT)
or SIGTERM shuts the notebook's kernel down and exits with 130 or 143, saying which checkpoints were kept;
the same command then resumes from the last one. ``run.json`` times each notebook by the execution that did its
work: the resumed series keeps the times of the notebooks the interrupted one finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from . import parallel
from .artifacts import ArtifactsError, RunLockedError, RunPaths, ensure_writable, read_json, run_lock, write_json
from .checkpoint import CheckpointError, list_checkpoints
from .config import REPO_ROOT, Config, choose_profile, make_config, resolve_device
from .device import device_name
from .profiles_help import profile_help

NOTEBOOKS = ("01_training", "02_ood_scores", "03_neural_collapse", "04_nc5_ood", "05_earlier_layers")
BOOK_FILES = ("_config.yml", "_toc.yml", "references.bib", "book")
MATHJAX = ("es5", "tex-svg.js")


class RunError(RuntimeError):
    """A step of the run failed; the message says which and where to look."""


class NotebookFailed(RunError):
    """A notebook raised; the message names it, the cell and the kept copy."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the runner; ``signum`` says which."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` (a KeyboardInterrupt), so ``finally`` blocks run and
    papermill shuts its kernel down; the previous handlers come back afterwards."""
    old = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class _QuietPapermill(logging.Filter):
    """Drop papermill's "Passed unknown parameter" notes: :class:`~helpers.config.Config` checks every name."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passed unknown parameter")


_QUIET = _QuietPapermill()
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]             # no "running over TCP without encryption" notice
KERNEL_WARNINGS = "ignore:IProgress not found"              # tqdm.auto's note when ipywidgets is missing


@contextlib.contextmanager
def _kernel_environment() -> Iterator[None]:
    """The kernel inherits this process's environment: silence tqdm's IProgress note there, for this call only."""
    old = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(w for w in (old, KERNEL_WARNINGS) if w)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = old


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
    """Run one notebook with papermill into ``out_dir``, its output streamed live to this terminal; returns
    wall seconds or raises :class:`RunError`. An interrupt shuts the kernel down at once (no grace period)."""
    import papermill as pm

    src, dst = REPO_ROOT / "notebooks" / f"{name}.ipynb", out_dir / f"{name}.ipynb"
    logging.getLogger("papermill").addFilter(_QUIET)
    start = time.perf_counter()
    try:
        with _kernel_environment():
            pm.execute_notebook(src, dst, parameters=parameters, cwd=str(REPO_ROOT / "notebooks"), progress_bar=False,
                                kernel_name="python3", stdout_file=sys.stdout, stderr_file=sys.stderr,
                                extra_arguments=KERNEL_ARGS, shutdown_kernel="immediate")
    except pm.PapermillExecutionError as err:
        msg = str(err.evalue).splitlines()[0] if err.evalue else ""
        raise NotebookFailed(f"notebook {name}.ipynb failed in cell {err.exec_count} ({err.ename}: {msg}); "
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
        out: Path | None = None, seeds: list[int] | None = None, snapshot: bool | None = None,
        wait_for_lock: bool = False, jobs: int = 1) -> Path:
    """Execute the notebooks in order, once per seed, then build the book; returns the output folder.

    ``snapshot`` (default: on for every profile but ``smoke``) refreshes ``results/<profile>-<id set>/`` from
    the runs, so that the book shows them. Each seed's run folder is locked for the whole run
    (``wait_for_lock``: queue behind another run instead of stopping). Seeds run side by side on several GPUs,
    or with ``jobs`` > 1 on the CPU (``helpers.parallel``).
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
    slots = _slots(cfgs[0], seeds, str(overrides.get("device", "auto")), jobs)
    with contextlib.ExitStack() as locks:
        for cfg in cfgs:
            locks.enter_context(_locked(RunPaths.of(cfg), wait_for_lock))
        if slots:
            print(f"profile {name} ({reason}): seeds {seeds} in parallel on "
                  f"{', '.join(parallel.label(s) for s in slots)}", flush=True)
            _in_children(name, seeds, slots, overrides, only, out)
        else:
            for cfg in cfgs:
                print(f"profile {name} ({reason}), seed {cfg.seed}; artifacts in {cfg.run_dir()}", flush=True)
                executed = out / "executed" if cfg is cfgs[-1] else out / f"executed-seed-{cfg.seed}"
                _run_series(cfg, chosen, executed, dict(profile=name, **{**overrides, "seed": cfg.seed}))
        _finish(name, cfgs, seeds, out, book and len(chosen) == len(NOTEBOOKS), snapshot, len(chosen))
    return out


def _in_children(profile: str, seeds: list[int], slots: list[str], overrides: dict[str, Any],
                 only: list[str] | None, out: Path) -> None:
    """Each seed's series in a child runner on its slot; the last seed's executed notebooks become the book's."""
    parallel.run_children(parallel.plan(seeds, slots), lambda s: _child_command(profile, s, overrides, only, out,
                                                                                slots[0]))
    shutil.rmtree(out / "executed", ignore_errors=True)
    shutil.copytree(out / f"seed-{seeds[-1]}" / "executed", out / "executed")


def _slots(cfg: Config, seeds: list[int], device: str, jobs: int) -> list[str]:
    """Where the seeds run side by side: ``jobs`` CPU slots, the visible GPUs, or nowhere (in sequence here)."""
    cpu = parallel.cpu_slots(min(jobs, len(seeds)))                     # checks jobs >= 1
    used = resolve_device(cfg)
    if jobs > 1 and used.type != "cpu":
        raise ValueError(f"--jobs {jobs} runs seeds side by side on the CPU, but this run uses {used} "
                         "(several GPUs take a seed each by themselves); drop --jobs or add -p device cpu.")
    if len(cpu) > 1:
        return cpu
    gpus = parallel.visible_gpus()
    return gpus if parallel.in_parallel(seeds, gpus, device) else []


def _child_command(profile: str, seed: int, overrides: dict[str, Any], only: list[str] | None, out: Path,
                   slot: str) -> list[str]:
    """One seed's series as a child runner (on the one GPU it sees, or on the CPU), without book or snapshot."""
    cmd = [sys.executable, "-m", "helpers.run", "--profile", profile, "--seeds", str(seed), "--no-book",
           "--no-snapshot", "--out", str(out / f"seed-{seed}")] + (["--only", *only] if only else [])
    device = "cpu" if slot.startswith(parallel.CPU) else "cuda"
    for key, value in {**overrides, "device": device}.items():
        cmd += ["-p", key, json.dumps(value)]
    return cmd


@contextlib.contextmanager
def _locked(paths: RunPaths, wait: bool) -> Iterator[None]:
    """The run folder's lock; with ``wait``, say once whom we wait for, then queue."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_lock(paths))
        except RunLockedError as err:
            if not wait:
                raise
            print(f"waiting: {err}", flush=True)
            stack.enter_context(run_lock(paths, wait=True))
        yield


def _run_series(cfg: Config, chosen: list[str], executed: Path, parameters: dict[str, Any]) -> None:
    """Execute ``chosen`` notebooks for one seed; an interrupt becomes :class:`Interrupted` saying what was kept."""
    executed.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    reused = {NOTEBOOKS[0]} if _last_epoch(cfg) >= cfg.epochs else set()   # notebook 01 will train nothing
    for i, nb in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {nb}.ipynb", flush=True)
        try:
            times[nb] = round(execute(nb, executed, parameters), 1)
        except Interrupted as err:
            write_run_json(cfg, times, complete=False, reused=reused)
            raise Interrupted(err.signum, f"interrupted by {signal.Signals(err.signum).name} during {nb}.ipynb; "
                                          f"{kept(cfg)}; run the same command again to resume.") from None
    write_run_json(cfg, times, reused=reused)


def _last_epoch(cfg: Config) -> int:
    """The last checkpointed epoch of ``cfg``'s run (0 when there is none or the folder cannot be read)."""
    try:
        return max(list_checkpoints(RunPaths.of(cfg).checkpoints), default=0)
    except (CheckpointError, OSError):
        return 0


def kept(cfg: Config) -> str:
    """What an interrupted run leaves: its checkpoints up to the last complete epoch."""
    folder = RunPaths.of(cfg).checkpoints
    try:
        epochs = list(list_checkpoints(folder)) if folder.exists() else []
    except CheckpointError as err:
        return f"kept the files in {folder}, but {err}"
    if not epochs:
        return "no checkpoint was written yet, so training starts over"
    return f"kept the checkpoints up to epoch {epochs[-1]} of {cfg.epochs} in {folder}"


def _finish(name: str, cfgs: list[Config], seeds: list[int], out: Path, book: bool, snapshot: bool | None,
            n_chosen: int) -> None:
    """The snapshot of a complete series (not for ``smoke`` unless asked) and the book."""
    if n_chosen == len(NOTEBOOKS) and (snapshot if snapshot is not None else name != "smoke"):
        from .results import write_snapshot

        print(f"snapshot: {write_snapshot(cfgs[-1], seeds, {c.seed: c.run_dir() for c in cfgs})}", flush=True)
    if book:
        stage = out / "book"
        stage_book(stage, out / "executed", cfgs)
        print(f"book: {build_book(stage) / 'index.html'}", flush=True)


def write_run_json(cfg: Config, times: dict[str, float], complete: bool = True, reused: set[str] = frozenset()
                   ) -> Path:
    """Provenance of a run: profile, configuration, commit, date, machine, data sources and wall time per notebook.

    ``complete`` is False for a series cut short; ``reused`` names notebooks whose execution redid no work (notebook
    01 on a run whose last epoch was already checkpointed). The times stay those of the executions that did the
    work (:func:`_seconds`).
    """
    import torch

    from .data import sources

    path = RunPaths.of(cfg).run_json
    try:
        old = read_json(path) or {}
    except ValueError:                                                    # a damaged run.json is rewritten
        old = {}
    info = dict(profile=cfg.profile, config=cfg.to_dict(), commit=git_commit(),
                date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                machine=dict(platform=platform.platform(), processor=platform.machine(), cpus=os.cpu_count(),
                             threads=torch.get_num_threads(), torch=torch.__version__,   # CPU sums depend on it
                             gpu=device_name(resolve_device(cfg)) if torch.cuda.is_available() else None),
                data=sources(cfg), seconds=_seconds(old, cfg, times, reused), complete=complete)
    return write_json(path, info)


def _seconds(old: dict[str, Any], cfg: Config, times: dict[str, float], reused: set[str]) -> dict[str, float]:
    """Wall time per notebook, each of the execution that did its work.

    A new time replaces the recorded one, except, for the same configuration, where the recorded one is worth
    more: the notebooks of ``reused`` (their work was done before), and every notebook an interrupted series
    finished, when this series resumes it (the resumed notebooks reuse that work from the checkpoints and caches).
    A notebook cut off in the middle is timed by the execution that finishes it.
    """
    recorded = old.get("seconds", {})
    keep = set(reused)
    if old.get("complete") is False:
        keep |= set(recorded)
    if old.get("config") != json.loads(json.dumps(cfg.to_dict())):
        keep = set()
    return {**recorded, **{nb: t for nb, t in times.items() if nb not in keep or nb not in recorded}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.run", description=__doc__.split("\n\n")[0],
                                     epilog=profile_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", help="smoke | cpu | full | auto (default: smoke)")
    parser.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a config field in every notebook (papermill's spelling)")
    parser.add_argument("--only", nargs="+", help="run only these notebooks (by prefix, e.g. 01 02); no book")
    parser.add_argument("--no-book", action="store_true", help="execute the notebooks but do not build the book")
    parser.add_argument("--seeds", nargs="+", type=int, help="run the whole series once per seed")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="CPU: run N seeds side by side, each with 1/N of the cores (default 1: in sequence)")
    parser.add_argument("--out", type=Path, help="output folder (default: _build/<profile>)")
    parser.add_argument("--snapshot", action=argparse.BooleanOptionalAction, default=None,
                        help="refresh results/<profile>-<id set>/ (default: on except for the smoke profile)")
    parser.add_argument("--wait-for-lock", action="store_true",
                        help="if another run uses the same artifacts folder, wait for it instead of stopping")
    args = parser.parse_args(argv)
    try:
        with interrupts_as_exceptions():
            run(args.profile, parse_overrides(args.parameters), args.only, book=not args.no_book, out=args.out,
                seeds=args.seeds, snapshot=args.snapshot, wait_for_lock=args.wait_for_lock, jobs=args.jobs)
    except (ValueError, RunError, FileNotFoundError, ArtifactsError, parallel.SeedsFailedError) as err:
        lead = "\n" if isinstance(err, NotebookFailed) else ""      # after a progress bar's last \r
        print(f"{lead}error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    except Interrupted as err:
        print(f"\nerror: {err or 'interrupted; finished notebooks and checkpoints are kept.'}", file=sys.stderr)
        return 128 + err.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
