"""Notebooks 02-05 with a cold and a warm feature cache: wall time and peak memory.

The checkpoints of ``--profile`` (default smoke) with the ``-p NAME VALUE`` overrides, trained by notebook 01
in the artifacts folder (``-p artifacts PATH`` or ``$OODNC_ARTIFACTS``), are copied into a fresh temporary
artifacts folder, so the shared artifacts and their feature cache are never touched. Each notebook that exists
is then run twice through the runner, one process per notebook,

    python -m helpers.run --profile PROFILE --only NN --no-book -p artifacts TMP [-p NAME VALUE] --out TMP/out

first with an empty feature cache (cold: every (checkpoint, set) passes through the network once; notebook 05
streams its block statistics and caches the resulting rows), then again (warm: features and rows read from the
cache). Reported per notebook: the runner's own wall seconds of the notebook (``run.json``), and the peak RSS of
the largest process (runner or Jupyter kernel) from ``/usr/bin/time -v``.
Goal: the warm run of 02-05 takes at most 20 % of their cold run. The temporary folder is deleted at the end
unless ``--keep``.

    python benchmarks/bench_notebooks.py [--profile cpu -p epochs 3] [--quick | --full] [--threads 1] [--keep]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import yaml

from helpers.config import make_config
from helpers.run import NOTEBOOKS

GNU_TIME = Path("/usr/bin/time")
GB = 1024**3


def existing(prefixes: tuple[str, ...]) -> list[str]:
    """Notebooks of ``helpers.run.NOTEBOOKS`` starting with one of ``prefixes`` whose .ipynb exists."""
    return [n for n in NOTEBOOKS if n.startswith(prefixes) and (common.REPO_ROOT / "notebooks" / f"{n}.ipynb").exists()]


def run_runner(args: list[str], threads: int) -> dict:
    """``python -m helpers.run ARGS`` under /usr/bin/time -v; returns wall seconds, peak RSS bytes, exit code."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "helpers.run", *args]
    timed = GNU_TIME.exists()
    if timed:
        cmd = [str(GNU_TIME), "-v", *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr) if timed else None
    return dict(wall=wall, peak=int(found.group(1)) * 1024 if found else None, returncode=proc.returncode,
                tail=(proc.stdout + proc.stderr)[-1500:])


def copy_checkpoints(tmp: Path, profile: str, overrides: dict) -> Path:
    """Copy the run's checkpoints into a fresh artifacts folder ``tmp``; returns the new run folder."""
    cfg = make_config(profile, **overrides)
    src = cfg.run_dir() / "checkpoints"
    dst_run = make_config(profile, **{**overrides, "artifacts": str(tmp)}).run_dir()
    if not (src / f"epoch-{cfg.epochs:04d}.pt").exists():
        raise SystemExit(f"no finished {profile} training in {src.parent}; run notebook 01 first: python -m "
                         f"helpers.run --profile {profile} --only 01 --no-book (with the same -p options)")
    shutil.copytree(src, dst_run / "checkpoints")
    return dst_run


def slowest_cells(path: Path, n: int = 3) -> list[tuple[int, float]]:
    """(code cell number, seconds) of the ``n`` slowest cells, from papermill's per-cell metadata."""
    if not path.exists():
        return []
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    spent = [(i, c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0) for i, c in enumerate(cells, 1)]
    return sorted(spent, key=lambda t: -t[1])[:n]


def notebook_seconds(run_dir: Path, name: str) -> float | None:
    path = run_dir / "run.json"
    return json.loads(path.read_text())["seconds"].get(name) if path.exists() else None


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--keep", action="store_true", help="keep the temporary artifacts folder")
    p.add_argument("--profile", default="smoke", help="the profile whose checkpoints are copied (default smoke)")
    p.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a config override, as for helpers.run (repeatable)")
    args = p.parse_args()
    common.setup_torch(args.threads)
    m = common.header(f"notebooks 02-05, cold vs warm feature cache ({args.profile} profile)", args)
    overrides = {name: yaml.safe_load(value) for name, value in args.p}
    passed = [x for name, value in args.p if name != "artifacts" for x in ("-p", name, value)]
    chosen = existing(("02",) if args.quick else ("02", "03", "04", "05"))
    if not chosen:
        print("none of notebooks 02-05 exists yet; nothing to time.")
        return 0
    missing = [n for n in NOTEBOOKS[1:] if n not in chosen and not args.quick]
    print(f"timing {', '.join(chosen)}" + (f"; not present yet: {', '.join(missing)}" if missing else "")
          + f"; kernels with OMP_NUM_THREADS={args.threads}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-notebooks-"))
    passes = ("cold", "warm", "warm2") if args.full else ("cold", "warm")
    rows, raw = [], {}
    try:
        run_dir = copy_checkpoints(tmp, args.profile, overrides)
        files: dict[str, set[Path]] = {}
        for which in passes:
            for nb in chosen:
                r = run_runner(["--profile", args.profile, "--only", nb[:2], "--no-book", "--no-snapshot", *passed,
                                "-p", "artifacts", str(tmp), "--out", str(tmp / "out")], args.threads)
                if r["returncode"] != 0:
                    print(f"{nb} failed in the {which} pass (exit {r['returncode']}):\n{r['tail']}")
                    return 1
                r["seconds"] = notebook_seconds(run_dir, nb)
                raw.setdefault(nb, {})[which] = r
                r["slowest"] = slowest_cells(tmp / "out" / "executed" / f"{nb}.ipynb")
                cells = ", ".join(f"cell {i} {s:.1f} s" for i, s in r["slowest"])
                print(f"  {which:5s} {nb}: {r['seconds']} s in the notebook, {r['wall']:.0f} s with the runner; "
                      f"slowest: {cells}", flush=True)
            files[which] = set((run_dir / "features").rglob("*.pt"))
        cache = sum(f.stat().st_size for f in files["cold"])
        new = len(files[passes[-1]] - files["cold"])
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    for nb, r in raw.items():
        warm = min(r[w]["seconds"] for w in passes[1:])
        rows.append({"notebook": nb, "cold s": r["cold"]["seconds"], "warm s": warm,
                     "warm/cold": warm / r["cold"]["seconds"],
                     "cold peak RSS GB": (r["cold"]["peak"] or float("nan")) / GB,
                     "warm peak RSS GB": (r["warm"]["peak"] or float("nan")) / GB})
    cold, warm = sum(r["cold s"] for r in rows), sum(r["warm s"] for r in rows)
    rows.append({"notebook": "total", "cold s": cold, "warm s": warm, "warm/cold": warm / cold})
    common.table(rows, ["notebook", "cold s", "warm s", "warm/cold", "cold peak RSS GB", "warm peak RSS GB"])
    print(f"(notebook seconds as recorded by the runner in run.json; peak RSS of the largest process, runner or "
          f"kernel; warm = best of {len(passes) - 1} warm pass(es); feature cache written: {cache / 2**20:.0f} MiB)")
    if new:
        print(f"WARNING: the warm pass wrote {new} new feature files, so it recomputed features: the data or the "
              "helpers changed during the run (e.g. someone edited helpers/synthetic.py). Rerun for valid numbers.")
    g = common.goal("warm / cold wall time", 100 * warm / cold, 20, higher_is_better=False, unit=" %")
    common.write_json(args.json, dict(machine=m, size=common.size(args), profile=args.profile, overrides=overrides,
                                      notebooks=chosen, runs=raw, rows=rows,
                                      cache_bytes=cache, new_files_in_warm=new, goal=g))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
