"""Several seeds at once: one child process per seed, each seeing only its own GPU (or, on the CPU, none).

``python -m helpers.run --seeds 0 1 2`` on a machine with G ≥ 2 visible GPUs plans seed i onto GPU i mod G
(round robin, in the order given); each GPU runs its seeds one after another, the GPUs side by side. A child
gets ``CUDA_VISIBLE_DEVICES`` set to its one GPU, so inside it that GPU is ``cuda:0`` and nothing else is
visible, and an even share of the CPU threads. With fewer than two GPUs the seeds run in sequence in the
parent, unless ``--jobs N`` asks for N CPU slots (:func:`cpu_slots`): then N seeds run side by side on the CPU,
each child with no GPU visible and ``cpus / N`` threads. A failing seed does not stop the others; when all
have ended, the failures are reported in one line.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

VISIBLE = "CUDA_VISIBLE_DEVICES"
CPU = "cpu:"          # a CPU slot's prefix: ``cpu:0``, ``cpu:1``, ... (children that see no GPU)


class SeedsFailedError(RuntimeError):
    """At least one child failed; the message names each failed seed, its GPU, exit code and last output line."""


@dataclass(frozen=True)
class Assignment:
    """Seed ``seed`` runs on the GPU the parent knows as ``gpu`` (a ``CUDA_VISIBLE_DEVICES`` entry)."""

    seed: int
    gpu: str


def visible_gpus(environ: Mapping[str, str] | None = None, count: int | None = None) -> list[str]:
    """The GPUs this process may hand out, as ``CUDA_VISIBLE_DEVICES`` entries: the entries of the parent's
    own ``CUDA_VISIBLE_DEVICES`` when it is set (indices or UUIDs), else ``0 .. count-1`` with ``count``
    defaulting to ``torch.cuda.device_count()``."""
    environ = os.environ if environ is None else environ
    if count is None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    given = [g.strip() for g in environ.get(VISIBLE, "").split(",") if g.strip()]
    return (given if VISIBLE in environ else [str(i) for i in range(count)])[:count]


def in_parallel(seeds: Sequence[int], gpus: Sequence[str], device: str = "auto") -> bool:
    """Whether to run ``seeds`` as children: two seeds or more, two GPUs or more, and no one GPU asked for
    (``-p device cuda:N`` means that GPU for every seed, so the seeds run in sequence on it)."""
    return len(seeds) > 1 and len(gpus) > 1 and device in ("auto", "cuda")


def cpu_slots(jobs: int) -> list[str]:
    """``jobs`` CPU slots for seeds side by side on the CPU (``--jobs``): each child sees no GPU and gets
    ``cpus / jobs`` threads. On 2 cores two one-thread trainings do 1.2x the work of one two-thread training
    (2026-12-03: 2 x 186 vs 305 images/s at width 16), and the numbers are those of a one-thread run."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}.")
    return [f"{CPU}{i}" for i in range(jobs)]


def label(slot: str) -> str:
    """``GPU 1`` or ``CPU share 0``: how messages name a slot."""
    return f"CPU share {slot.removeprefix(CPU)}" if slot.startswith(CPU) else f"GPU {slot}"


def plan(seeds: Sequence[int], gpus: Sequence[str]) -> list[Assignment]:
    """Seed i of ``seeds`` (in order) on ``gpus[i mod G]``; each GPU runs its seeds in the order given."""
    if not gpus:
        raise ValueError("plan() needs at least one GPU; run the seeds in sequence instead.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))} repeats a seed; give each seed once.")
    return [Assignment(seed, gpus[i % len(gpus)]) for i, seed in enumerate(seeds)]


def child_env(environ: Mapping[str, str], gpu: str, parallel: int, cpus: int | None = None) -> dict[str, str]:
    """The environment of one child: only ``gpu`` visible (none for a CPU slot), ``cpus / parallel`` threads
    unless set already, and unbuffered output, so that its lines reach the parent as they are printed."""
    threads = str(max(1, (cpus or os.cpu_count() or 1) // max(1, parallel)))
    env = {**environ, VISIBLE: "" if gpu.startswith(CPU) else gpu, "PYTHONUNBUFFERED": "1"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, threads)
    return env


@dataclass
class _Child:
    job: Assignment
    proc: subprocess.Popen
    reader: threading.Thread
    tail: list[str]


def _start(job: Assignment, command: list[str], env: dict[str, str], echo: Callable[[str], None],
           lock: threading.Lock) -> _Child:
    """Launch one child, its output (stdout and stderr) echoed line by line with a ``[seed S, GPU G]`` prefix."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, bufsize=1)
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail[:] = [*tail[-19:], line] if line.strip() else tail
            with lock:
                echo(f"[seed {job.seed}, {label(job.gpu)}] {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return _Child(job, proc, reader, tail)


def run_children(jobs: Sequence[Assignment], command: Callable[[int], list[str]],
                 environ: Mapping[str, str] | None = None, echo: Callable[[str], None] = print,
                 poll: float = 0.05) -> dict[int, int]:
    """Run the planned ``jobs`` (``command(seed)`` is a child's argv), one child per GPU at a time, each GPU's
    seeds in order; wait for all. Returns {seed: exit code}; raises :class:`SeedsFailedError` if any failed."""
    environ = os.environ if environ is None else environ
    queues: dict[str, list[Assignment]] = {}
    for job in jobs:
        queues.setdefault(job.gpu, []).append(job)
    lock, running, codes, tails = threading.Lock(), {}, {}, {}
    try:
        while any(queues.values()) or running:
            for gpu in [g for g, q in queues.items() if q and g not in running]:
                job = queues[gpu].pop(0)
                running[gpu] = _start(job, command(job.seed), child_env(environ, gpu, len(queues)), echo, lock)
            time.sleep(poll)
            for gpu, child in list(running.items()):
                if child.proc.poll() is not None:
                    child.reader.join()
                    codes[child.job.seed], tails[child.job.seed] = child.proc.returncode, child.tail
                    del running[gpu]
    finally:
        _stop(running.values())
    _report(jobs, codes, tails)
    return codes


def _stop(children) -> None:
    """Terminate the children this call started and that still run (on an interrupt or an error)."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
            child.proc.wait()


def _report(jobs: Sequence[Assignment], codes: dict[int, int], tails: dict[int, list[str]]) -> None:
    failed = [job for job in jobs if codes.get(job.seed) != 0]
    if not failed:
        return
    done = [str(job.seed) for job in jobs if codes.get(job.seed) == 0]
    what = "; ".join(f"seed {j.seed} ({label(j.gpu)}) exited with {codes.get(j.seed)}: "
                     f"{(tails.get(j.seed) or ['no output'])[-1].strip()[:200]}" for j in failed)
    kept = f"seeds {', '.join(done)} finished and are kept" if done else "no seed finished"
    raise SeedsFailedError(f"{what}; {kept}; rerun the failed seeds with --seeds (finished work is reused).")
