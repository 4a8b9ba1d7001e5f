"""Everything a run leaves on disk: where it goes, and the one way a file is written.

A run's folder ``<artifacts>/<profile>-<id set>-s<seed>-<key>/`` holds ``checkpoints/``, ``features/``,
``metrics/``, ``figures/`` and ``run.json``; committed result snapshots live in ``results/<profile>-<id set>/``.
Every file is written by :func:`atomic_write`: a temporary file in the same folder, flushed with ``fsync`` and
renamed into place, so a reader sees the old file or the new one, never a torn one, and a failed write
(a full disk, a killed process) leaves the previous file intact.
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable
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


@dataclass(frozen=True)
class RunPaths:
    """The folders and files of one configuration's run."""

    root: Path

    @classmethod
    def of(cls, cfg: Config) -> RunPaths:
        base = Path(cfg.artifacts or os.environ.get("OODNC_ARTIFACTS") or REPO_ROOT / "artifacts")
        return cls(base / f"{cfg.profile}-{set_slug(cfg.id_dataset)}-s{cfg.seed}-{cfg.key()}")

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


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


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync, rename; the old file survives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        why = "the disk is full" if full else (err.strerror or type(err).__name__)
        raise ArtifactsError(f"could not write {path} ({why}); the previous file, if any, is intact; "
                             "free space or point -p artifacts elsewhere, then run again.") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_torch(obj: Any, path: Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


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
