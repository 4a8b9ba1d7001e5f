"""Shared pieces of the benchmark scripts: command line, thread setting, interleaved timing, tables.

Every ratio a script prints is measured in one process and one run: the two variants A and B are timed
in alternation (A, B, A, B, ...) and each is summarised by its median, so that a change in the machine's
load during the run affects both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:                      # run as `python benchmarks/NAME.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))


def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every script shares: size, threads, JSON output."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smallest sizes (a smoke test of the script)")
    size.add_argument("--full", action="store_true", help="the sizes of the full profile (slow on a CPU)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for this process (default: 1; on a busy 2-core machine a second "
                        "OpenMP thread mostly waits for a descheduled partner)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return p


def size(args: argparse.Namespace) -> str:
    return "quick" if args.quick else "full" if args.full else "default"


def setup_torch(threads: int) -> int:
    """Set torch's intra-op threads explicitly and return the value in effect."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}.")
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine() -> dict[str, Any]:
    """Where and when: cores, load average at the start, torch version, threads."""
    import torch

    load = os.getloadavg()
    return dict(date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), cpus=os.cpu_count(),
                load_1_5_15=[round(v, 2) for v in load], torch=torch.__version__, threads=torch.get_num_threads(),
                platform=platform.platform(), python=platform.python_version())


def header(title: str, args: argparse.Namespace) -> dict[str, Any]:
    """Print the title, machine and load line that every script starts with; return the machine dict."""
    m = machine()
    print(f"== {title} ({size(args)} size) ==")
    print(f"{m['date']}; {m['cpus']} CPUs; load average {m['load_1_5_15']} (1/5/15 min); torch {m['torch']}; "
          f"torch.set_num_threads({m['threads']})")
    if m["load_1_5_15"][0] > 0.5 * (m["cpus"] or 1):
        print("note: the machine is busy (load average above half the cores); absolute figures are pessimistic, "
              "ratios are measured side by side and are more robust.")
    return m


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each function over ``repeats`` rounds, the functions alternating within each round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))        # alternate who goes first
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> str:
    """min–max of a list of seconds, for the table."""
    return f"{min(xs):.3g}–{max(xs):.3g}"


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print ``rows`` as a fixed-width table with the given columns."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def goal(name: str, value: float, target: float, higher_is_better: bool = True, unit: str = "") -> dict[str, Any]:
    """Print one goal line, e.g. ``goal ratio >= 10: 23.1 -> met``; return it as a dict."""
    met = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    print(f"goal {name} {sign} {target:g}{unit}: {value:.4g}{unit} -> {'met' if met else 'MISSED'}")
    return dict(name=name, value=value, target=target, higher_is_better=higher_is_better, met=met)


def result(name: str, value: str) -> None:
    """Print one figure that has no goal, e.g. ``result training step, share of the float32 peak: 62 %``;
    ``run_all.py`` puts it in the README's table."""
    print(f"result {name}: {value}")


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    print(f"results written to {path}")
