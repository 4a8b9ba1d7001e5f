"""Run every benchmark once and regenerate the goal table of ``benchmarks/README.md`` from that one run.

Each script runs in its own process with ``--json``; its output is kept in ``--logs`` (default a temporary
folder, printed at the end). Every ``goal NAME OP TARGET: VALUE -> met|MISSED`` line the scripts print
becomes one row of the table between the markers ``<!-- goals -->`` and ``<!-- /goals -->`` of the README,
with the date, the machine's load and the command line of the run above it. Nothing in the table is typed by
hand.

    python benchmarks/run_all.py [--threads 2] [--only scores bootstrap] [--notebooks -p epochs 3 ...]
                                 [--no-readme] [--logs DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- goals -->", "<!-- /goals -->"
GOAL = re.compile(r"^goal (?P<name>.+?) (?P<op>>=|<=) (?P<target>[^:]+): (?P<value>.+?) -> (?P<status>met|MISSED)$")
RESULT = re.compile(r"^result (?P<name>[^:]+): (?P<value>.+)$")      # a figure without a goal (common.result)
NOISE = re.compile(r"^(W\d{4} |results written|warnings\.warn|\S+Warning)")   # not a summary line
# name: (script, extra arguments); bench_notebooks runs on the cpu profile when its checkpoints are given
SCRIPTS = {
    "augment": ("bench_augment.py", []),
    "train": ("bench_train.py", []),
    "cpu_limit": ("bench_cpu_limit.py", []),
    "scores": ("bench_scores.py", []),
    "eval_batch": ("bench_eval_batch.py", []),
    "bootstrap": ("bench_bootstrap.py", []),
    "memory": ("bench_memory.py", []),
    "notebooks": ("bench_notebooks.py", []),
    "book": ("bench_book.py", []),
    "gpu": ("bench_gpu.py", []),
}


def parse_goals(output: str) -> list[dict[str, str]]:
    """The goal lines of one script's output, as dicts with name, op, target, value and status."""
    return [m.groupdict() for line in output.splitlines() if (m := GOAL.match(line.strip()))]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def goal_table(results: dict[str, dict]) -> str:
    """Markdown rows: one per goal line and per result line, or the last line of a script that printed neither."""
    rows = ["| script | goal | target | measured | |", "|---|---|---|---|---|"]
    for name, r in results.items():
        script = SCRIPTS[name][0]
        lines = [line.strip() for line in r["output"].splitlines()]
        figures = [m.groupdict() for line in lines if (m := RESULT.match(line))]
        if not r["goals"] and not figures:
            last = next((line for line in reversed(lines) if line and not NOISE.match(line)), "(no output)")
            shown = last if len(last) <= 120 else "(its tables are in its output; see the section below)"
            rows.append(f"| {script} | (no goal; exit {r['code']}) | | {_cell(shown)} | |")
        for g in r["goals"]:
            rows.append(f"| {script} | {_cell(g['name'])} | {g['op']} {g['target']} | {g['value']} | "
                        f"{'met' if g['status'] == 'met' else '**missed**'} |")
        rows += [f"| {script} | {_cell(f['name'])} | (no goal) | {_cell(f['value'])} | |" for f in figures]
    return "\n".join(rows)


def replace_section(text: str, body: str) -> str:
    """``text`` with everything between the goal markers replaced by ``body``."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README} has no {BEGIN} ... {END} markers; add them where the table belongs.")
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{rest.split(END, 1)[1]}"


def run_one(name: str, threads: int, logs: Path, extra: list[str]) -> dict:
    script, args = SCRIPTS[name]
    cmd = [sys.executable, str(HERE / script), "--threads", str(threads), "--json", str(logs / f"{name}.json"),
           *args, *extra]
    print(f"== {script} {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    output = proc.stdout + proc.stderr
    (logs / f"{name}.log").write_text(output)
    goals = parse_goals(output)
    seconds = time.perf_counter() - start
    for g in goals:
        print(f"   {g['name']} {g['op']} {g['target']}: {g['value']} -> {g['status']}", flush=True)
    print(f"   ({seconds:.0f} s, exit {proc.returncode})", flush=True)
    return dict(goals=goals, code=proc.returncode, output=output, seconds=seconds)


def rebuild(logs: Path, no_readme: bool) -> int:
    """The table of an earlier run from its saved outputs and header (``run.txt``): the same run, re-rendered."""
    header = (logs / "run.txt").read_text().strip()
    results = {name: dict(goals=parse_goals(out), output=out, code=0)
               for name in SCRIPTS if (out := _read(logs / f"{name}.log")) is not None}
    body = header + "\n\n" + goal_table(results)
    print(body)
    if not no_readme:
        README.write_text(replace_section(README.read_text(), body))
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads of every script (default 2)")
    p.add_argument("--only", nargs="+", choices=list(SCRIPTS), help="run only these scripts")
    p.add_argument("--notebooks", nargs=argparse.REMAINDER, default=[],
                   help="arguments for bench_notebooks.py, e.g. --profile cpu -p epochs 3 -p artifacts PATH")
    p.add_argument("--no-readme", action="store_true", help="print the table, do not write the README")
    p.add_argument("--logs", type=Path, help="folder for each script's output and JSON (default: a temporary one)")
    p.add_argument("--from-logs", type=Path, metavar="DIR",
                   help="rebuild the table from the outputs of an earlier run_all run in DIR (runs nothing)")
    args = p.parse_args(argv)
    if args.from_logs:
        return rebuild(args.from_logs, args.no_readme)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="benchmarks-"))
    logs.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = {name: run_one(name, args.threads, logs, args.notebooks if name == "notebooks" else [])
               for name in (args.only or SCRIPTS)}
    command = " ".join(["python benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    body = (f"Generated by `{command}` on {started}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at the "
            f"start, {args.threads} threads; {sum(r['seconds'] for r in results.values()) / 60:.0f} min in all.\n\n"
            + goal_table(results))
    (logs / "run.txt").write_text(body.split("\n\n", 1)[0] + "\n")
    print("\n" + body)
    if args.only:
        print("\n(--only: the README keeps its table, which comes from one run of every script)")
    elif not args.no_readme:
        README.write_text(replace_section(README.read_text(), body))
        print(f"\nwrote the table into {README}")
    print(f"outputs in {logs}")
    return 0 if all(r["code"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
