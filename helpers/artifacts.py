"""Everything a run leaves on disk: where it goes, and the one way a file is written.

A run's folder ``<artifacts>/<profile>-<id set>-s<seed>-<key>/`` holds ``checkpoints/``, ``features/``,
``metrics/``, ``figures/`` and ``run.json``; committed result snapshots live in ``results/<profile>-<id set>/``.
Every file is written by :func:`atomic_write`: a temporary file in the same folder, flushed with ``fsync`` and
renamed into place, so a reader sees the old file or the new one, never a torn one, and a failed write
(a full disk, a killed process) leaves the previous file intact. :func:`run_lock` keeps a second process off a
run folder while one works in it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .config import REPO_ROOT, Config

RESULTS = REPO_ROOT / "results"


class ArtifactsError(OSError):
    """A file of the run cannot be written (unwritable folder, full disk); the message says what to do."""


# ------------------------------------------------------------------------------------------------- paths
def set_slug(id_dataset: str) -> str:
    """File-name form of an ID set name: ``imagefolder:/data/pets`` → ``data_pets`` (at most 24 characters)."""
    return id_dataset.replace("imagefolder:", "").strip("/").replace("/", "_")[-24:]


def _inside(name: str) -> property:
    """A property ``root / name`` of :class:`RunPaths`."""
    return property(lambda self: self.root / name, doc=f"``<run folder>/{name}``")


@dataclass(frozen=True)
class RunPaths:
    """The folders and files of one configuration's run."""

    root: Path
    checkpoints = _inside("checkpoints")
    features = _inside("features")
    metrics = _inside("metrics")
    figures = _inside("figures")
    run_json = _inside("run.json")
    lock = _inside(".lock")

    @classmethod
    def of(cls, cfg: Config) -> RunPaths:
        base = Path(cfg.artifacts or os.environ.get("OODNC_ARTIFACTS") or REPO_ROOT / "artifacts")
        return cls(base / f"{cfg.profile}-{set_slug(cfg.id_dataset)}-s{cfg.seed}-{cfg.key()}")


def snapshot_dir(cfg: Config) -> Path:
    """``results/<profile>-<id set>/``: the committed snapshot of a profile's runs (all seeds)."""
    return RESULTS / f"{cfg.profile}-{set_slug(cfg.id_dataset)}"


# ------------------------------------------------------------------------------------------------ writing
def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` and check that a file can be written there; raise :class:`ArtifactsError` otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ArtifactsError(f"cannot write to the artifacts folder {folder} ({err.strerror or type(err).__name__}); "
                             "pass -p artifacts PATH with a writable PATH.") from None
    return folder


class _Sink:
    """A binary file that hashes what passes through it and remembers the ``OSError`` of a failed write
    (``torch.save`` turns that error into a ``RuntimeError``, which would hide a full disk)."""

    def __init__(self, f: IO[bytes], digest: Any = None) -> None:
        self.f, self.digest, self.error = f, digest, None

    def write(self, data: Any) -> int:
        try:
            n = self.f.write(data)
        except OSError as err:
            self.error = err
            raise
        if self.digest is not None:
            self.digest.update(data)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], digest: Any = None) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync, rename; the old file survives a failure.

    ``digest`` (e.g. ``hashlib.sha256()``) is updated with every byte written, so a caller gets the file's
    hash without reading it back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            sink = _Sink(raw, digest)
            _write_through(sink, write)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise _write_error(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _write_through(sink: _Sink, write: Callable[[IO[bytes]], None]) -> None:
    try:
        write(sink)  # type: ignore[arg-type]
    except RuntimeError:
        if sink.error is None:
            raise
        raise sink.error from None


def _write_error(path: Path, err: OSError) -> ArtifactsError:
    full = err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    why = "the disk is full" if full else (err.strerror or type(err).__name__)
    return ArtifactsError(f"could not write {path} ({why}); the previous file, if any, is intact; "
                          "free space or point -p artifacts elsewhere, then run again.")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_torch(obj: Any, path: Path, digest: Any = None) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (``digest``: see :func:`atomic_write`)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), digest)


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def clean_json(obj: Any, digits: int = 6) -> Any:
    """Round floats (NaN/inf → null) and turn tensors/arrays into lists, so JSON is stable and readable."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, digits)
    if isinstance(obj, dict):
        return {str(k): clean_json(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v, digits) for v in obj]
    return obj


def write_json(path: Path, data: Any) -> Path:
    """JSON with sorted keys and rounded floats: the same numbers give the same bytes."""
    return write_text(path, json.dumps(clean_json(data), indent=1, sort_keys=True) + "\n")


def read_json(path: Path) -> Any | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


# ------------------------------------------------------------------------------------------------ the lock
LOCK_ENV = "OODNC_RUN_LOCK"     # set while a process holds a run's lock, so the processes it starts share it


class RunLockedError(ArtifactsError):
    """Another live process holds the lock of this run folder."""


def _holder(lock: Path) -> dict[str, Any]:
    try:
        return json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another run (its details are not written yet)"
    return f"run pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _acquire(fd: int, lock: Path, wait: bool, poll: float) -> None:
    """Take the kernel lock on ``fd``; a dead holder's lock is free already (the kernel drops it with the process)."""
    while not _try_lock(fd):
        if not wait:
            raise RunLockedError(
                f"the run folder {lock.parent} is in use by {_describe(_holder(lock))}; wait for it to finish "
                "or stop it (python -m helpers.run --wait-for-lock queues behind it).")
        time.sleep(poll)


@contextlib.contextmanager
def run_lock(paths: RunPaths, wait: bool = False, poll: float = 0.5) -> Iterator[dict[str, Any]]:
    """Hold ``paths.lock`` (``fcntl.flock``) for the ``with`` block; yields the holder record (pid, host, start).

    A second process gets :class:`RunLockedError` naming the holder, or with ``wait=True`` waits for it. A lock
    left by a dead process is taken over (the kernel releases it). Re-entrant: inside the block, and in child
    processes started from it (they inherit ``OODNC_RUN_LOCK``), the same folder's lock is already held.
    """
    lock = Path(paths.lock)
    if str(lock) in os.environ.get(LOCK_ENV, "").split(os.pathsep):
        yield _holder(lock)
        return
    ensure_writable(lock.parent)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    previous = os.environ.get(LOCK_ENV)
    try:
        _acquire(fd, lock, wait, poll)
        holder = dict(pid=os.getpid(), host=socket.gethostname(),
                      started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.environ[LOCK_ENV] = os.pathsep.join(p for p in (previous, str(lock)) if p)
        yield holder
    finally:
        _restore_env(previous)
        os.close(fd)                                                  # releases the flock


def _restore_env(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(LOCK_ENV, None)
    else:
        os.environ[LOCK_ENV] = previous
