"""Checkpoints written atomically and found by the epoch stored inside them.

A checkpoint is written to a temporary file, flushed with ``fsync`` and renamed into place, so a file
named ``epoch-*.pt`` is always complete; a truncated or foreign file is reported, never loaded silently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "oodnc-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, truncated or belongs to another configuration."""


def save_atomic(obj: dict[str, Any], path: Path) -> Path:
    """Write ``obj`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load and check one checkpoint; raise :class:`CheckpointError` with advice when it is damaged.

    ``mmap=True`` maps the tensors instead of reading them (cheap when only the metadata is needed).
    """
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - garbage bytes raise UnpicklingError, KeyError, ...; all mean unusable
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); delete it to "
                              "resume from the previous checkpoint or retrain.") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project; move it out of the checkpoints folder.")
    return blob


def check_matches(blob: dict[str, Any], path: Path, num_classes: int, width: int) -> None:
    """Refuse a checkpoint trained for another width or number of classes."""
    cfg = blob["config"]
    if (cfg["width"], blob["num_classes"]) != (width, num_classes):
        raise CheckpointError(
            f"checkpoint {path} has width {cfg['width']} and {blob['num_classes']} classes, but this run needs "
            f"width {width} and {num_classes} classes; point -p artifacts elsewhere or remove that folder.")


class ArtifactsError(OSError):
    """The artifacts folder cannot be created or written."""


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


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete temporary files left by a killed :func:`save_atomic` (their writer's process is gone)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_checkpoints(folder: Path) -> dict[int, Path]:
    """Map epoch → checkpoint file, reading the epoch stored in each file (never the file name)."""
    found = {}
    for path in sorted(Path(folder).glob("*.pt")):
        found[int(load(path, mmap=True)["epoch"])] = path
    return dict(sorted(found.items()))


def checkpoint_epochs(epochs: int, every: int) -> list[int]:
    """Epochs to save: log-spaced up to ``every`` (dense early, where collapse starts), then every ``every``
    epochs, and always the last. E.g. (40, 5) → [1, 2, 3, 5, 10, 15, ..., 40]."""
    early = np.unique(np.round(np.geomspace(1, every, num=max(2, int(np.log2(every)) + 2))).astype(int))
    regular = range(every, epochs + 1, every)
    return sorted({int(e) for e in early if e <= epochs} | set(regular) | {epochs})
