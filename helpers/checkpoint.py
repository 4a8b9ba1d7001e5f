"""Checkpoints written atomically and found by the epoch stored inside them.

A checkpoint is written through :func:`helpers.artifacts.write_torch` (temporary file, ``fsync``, rename), so
a file named ``epoch-*.pt`` is always complete; a truncated or foreign file is reported, never loaded silently.
Each one stores the SHA-256 of its weights, computed once when it is saved, so the feature cache is keyed by
the checkpoint's content without hashing it again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import ArtifactsError, ensure_writable, write_torch

__all__ = ["FORMAT", "ArtifactsError", "CheckpointError", "check_matches", "checkpoint_epochs", "digest",
           "ensure_writable", "list_checkpoints", "load", "remove_stale_tmp", "save_atomic", "weights_digest"]

FORMAT = "oodnc-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, truncated or belongs to another configuration."""


def save_atomic(obj: dict[str, Any], path: Path) -> Path:
    """Write ``obj`` to ``path`` atomically, with the digest of its weights (see :func:`digest`) stored inside."""
    extra = {"digest": weights_digest(obj["model"])} if isinstance(obj.get("model"), dict) else {}
    return write_torch({"format": FORMAT, **obj, **extra}, path)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) of a state dict's names, dtypes, shapes and bytes: what a forward pass depends on."""
    sha = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        sha.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return sha.hexdigest()[:16]


def digest(path: Path) -> str:
    """The feature cache's key for checkpoint ``path``: the weights digest recorded when it was saved, read from
    its metadata (tensors memory-mapped, not read); a checkpoint without one is hashed byte by byte."""
    stored = load(path, mmap=True).get("digest")
    if stored:
        return str(stored)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return "file-" + sha.hexdigest()[:16]


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


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Delete temporary files left by a killed atomic write (their writer's process is gone)."""
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
