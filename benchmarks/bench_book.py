"""The smoke book end to end: train, run every notebook, build the book, in a fresh artifacts folder.

    python -m helpers.run --profile smoke -p artifacts TMP --out TMP/out

with a new temporary artifacts folder (so nothing is reused: notebook 01 trains from scratch and every
feature is computed), under /usr/bin/time -v. Reported: total wall seconds, each notebook's seconds from the
runner's ``run.json``, the rest (runner start-up, staging and ``jupyter-book build``), and the peak RSS of the
largest process. Goal: <= 5 minutes on 2 cores. This one is long (several minutes); ``--quick`` trains 3 epochs
instead of 10 to test the script. If some notebooks do not exist yet, only those that do are run and the book
is not built (the goal is then not evaluated). If the runner executes every notebook but its own book-build
step fails, the staged sources are built with the ``jupyter-book`` executable instead and that time is added
(the script says so). The temporary folder is deleted unless ``--keep``.

    python benchmarks/bench_book.py [--quick] [--threads 1] [--keep] [--json out.json]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from bench_notebooks import GB, GNU_TIME, existing, notebook_seconds, run_runner

from helpers.config import make_config
from helpers.run import NOTEBOOKS

GOAL_SECONDS = 300


def build_directly(stage: Path, failed: dict, threads: int) -> dict:
    """Time ``jupyter-book build`` on the runner's staged sources, after the runner's own build step failed."""
    line = next((x for x in failed["tail"].splitlines() if "jupyter_book" in x or "book build" in x), "")
    print(f"the runner executed every notebook but its book build failed ({line.strip()}); building the staged "
          "sources with the jupyter-book executable instead, to time that step", flush=True)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe), "build", str(stage), "-W", "--keep-going", "-q"]
    if GNU_TIME.exists():
        cmd = [str(GNU_TIME), "-v", *cmd]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode != 0:
        print(f"jupyter-book build failed too (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-1500:]}")
    return dict(wall=wall, peak=int(found.group(1)) * 1024 if found else None, returncode=proc.returncode)


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--keep", action="store_true", help="keep the temporary artifacts folder")
    args = p.parse_args()
    common.setup_torch(args.threads)
    m = common.header("smoke book end to end (fresh artifacts)", args)
    chosen = existing(tuple(n[:2] for n in NOTEBOOKS))
    complete = len(chosen) == len(NOTEBOOKS)
    overrides = {"epochs": 3} if args.quick else {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-book-"))
    cmd = ["--profile", "smoke", "-p", "artifacts", str(tmp), "--out", str(tmp / "out")]
    for k, v in overrides.items():
        cmd += ["-p", k, str(v)]
    if not complete:
        cmd += ["--only", *(n[:2] for n in chosen), "--no-book"]
    print(f"notebooks: {', '.join(chosen)}" + ("" if complete else " (not all exist yet: no book build)")
          + (f"; overrides {overrides}" if overrides else "") + f"; OMP_NUM_THREADS={args.threads}")
    print("running: python -m helpers.run " + " ".join(cmd), flush=True)
    fallback = None
    try:
        r = run_runner(cmd, args.threads)
        run_dir = make_config("smoke", artifacts=str(tmp), **overrides).run_dir()
        seconds = {nb: notebook_seconds(run_dir, nb) for nb in chosen}
        stage = tmp / "out" / "book"
        if r["returncode"] != 0 and complete and all(seconds.values()) and (stage / "_toc.yml").exists():
            fallback = build_directly(stage, r, args.threads)
        built = (stage / "_build" / "html" / "index.html").exists()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    if r["returncode"] != 0 and not (fallback and fallback["returncode"] == 0):
        print(f"the run failed (exit {r['returncode']}):\n{r['tail']}")
        return 1
    if fallback:
        r = dict(r, wall=r["wall"] + fallback["wall"], peak=max(r["peak"] or 0, fallback["peak"] or 0) or None)
    nb_total = sum(s or 0 for s in seconds.values())
    rows = [{"step": nb, "seconds": s} for nb, s in seconds.items()]
    rows += [{"step": "runner start-up, staging" + (", jupyter-book build" if complete else ""),
              "seconds": r["wall"] - nb_total},
             {"step": "total wall", "seconds": r["wall"]}]
    common.table(rows, ["step", "seconds"])
    peak = f"{r['peak'] / GB:.2f} GB" if r["peak"] else "n/a (no /usr/bin/time)"
    print(f"book built: {built}; peak RSS of the largest process (runner, kernel or sphinx): {peak}")
    g = None
    if complete and not args.quick:
        g = common.goal("smoke book end to end", r["wall"] / 60, GOAL_SECONDS / 60, higher_is_better=False,
                        unit=" min")
    else:
        print("goal (<= 5 min for the whole smoke book) not evaluated: " +
              ("--quick trains 3 epochs" if args.quick else "not all notebooks exist yet"))
    common.write_json(args.json, dict(machine=m, size=common.size(args), notebooks=chosen, complete=complete,
                                      wall=r["wall"], peak=r["peak"], seconds=seconds, book_built=built, goal=g))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
