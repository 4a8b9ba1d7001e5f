"""The one loop over a data set: logits, penultimate features and pooled block outputs, cached on disk.

Scores and collapse metrics take the tensors this module returns and never call the model
(as pytorch-ood's ``fit_features``/``predict_features`` and neural-collapse's accumulate-then-measure split).
The cache key covers the checkpoint's content (its digest, recorded when it was saved), the data set (its
pixel digest, computed once per loaded set), the preprocessing, the precision and the cache format, so a warm
re-run of notebooks 02–05 does not touch the network; a damaged cache file is a miss, reported and rewritten.
"""

from __future__ import annotations

import hashlib
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .artifacts import RunPaths, write_torch
from .checkpoint import digest as checkpoint_digest
from .checkpoint import load as load_checkpoint
from .config import Config
from .data import ImageSet, Splits, normalize
from .device import Precision, eval_batch
from .model import build_model
from .progress import progress_bar as tqdm


@dataclass
class Features:
    """Network outputs for one data set: logits (N, K), features h (N, D), labels (N,),
    and optionally the pooled outputs of the 8 residual blocks, each (N, C_l)."""

    logits: Tensor
    features: Tensor
    labels: Tensor
    blocks: list[Tensor] | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]


@torch.no_grad()
def extract(model: nn.Module, ds: ImageSet, mean: Tensor, std: Tensor, device: torch.device,
            batch_size: int = 512, blocks: bool = False, progress: bool = False,
            precision: str = "fp32") -> Features:
    """One pass of ``model`` (eval mode) over ``ds``; results as float32 CPU tensors.

    The convolutional body runs in ``precision`` (``auto``: the device's training precision); global pooling
    and the last linear layer always run in float32, so logits and features carry no bf16 rounding.
    """
    was_training = model.training
    model.eval()
    amp = Precision.for_device(device, precision)
    images = ds.images.to(device, non_blocking=True)
    mean, std = mean.to(device), std.to(device)                          # once, not per batch
    weight, bias = model.fc.weight.float(), model.fc.bias.float()
    channels_last = device.type == "cuda"
    outs: list = []
    for start in tqdm(range(0, len(ds), batch_size), desc=f"features {ds.name}", disable=not progress, leave=False):
        x = normalize(images[start:start + batch_size], mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp.autocast():
            fmap, pooled = model.body(x, blocks)
        h = fmap.float().mean((2, 3))                                    # (B, D) in float32
        outs.append((F.linear(h, weight, bias), h, [b.float() for b in pooled] if blocks else None))
    model.train(was_training)
    logits = torch.cat([o[0] for o in outs]).cpu()                       # (N, K)
    feats = torch.cat([o[1] for o in outs]).cpu()                        # (N, D)
    pooled = [torch.cat([o[2][i] for o in outs]).cpu() for i in range(len(outs[0][2]))] if blocks else None
    return Features(logits, feats, ds.labels.clone(), pooled)


# ------------------------------------------------------------------------------------------------ the cache
CACHE_FORMAT = "oodnc-features-v2"     # part of every cache key: files of another layout are never read

_SET_DIGESTS: dict[int, tuple[weakref.ref, tuple[int, int, int], str]] = {}


def set_digest(ds: ImageSet) -> str:
    """BLAKE2b of a set's pixels and labels (16 hex digits), computed once per loaded set: remembered while
    its image tensor lives and neither tensor is changed in place (``Tensor._version``)."""
    key, stamp = id(ds.images), (ds.images._version, id(ds.labels), ds.labels._version)
    known = _SET_DIGESTS.get(key)
    if known is not None and known[0]() is ds.images and known[1] == stamp:
        return known[2]
    h = hashlib.blake2b(digest_size=8)
    for t in (ds.images, ds.labels):
        h.update(f"{tuple(t.shape)} {t.dtype}".encode())
        h.update(t.contiguous().numpy().data)
    _SET_DIGESTS[key] = (weakref.ref(ds.images, lambda _: _SET_DIGESTS.pop(key, None)), stamp, h.hexdigest())
    return h.hexdigest()


def cache_path(cache_dir: Path, checkpoint: Path, ds: ImageSet, mean: Tensor, std: Tensor,
               precision: str = "fp32", device_type: str = "cpu") -> Path:
    """Cache file of ``ds`` under ``checkpoint``: keyed by the checkpoint's bytes (:func:`helpers.checkpoint.digest`,
    recorded when it was saved), the set's name, pixels and labels, the normalisation statistics, the precision
    and device type of the pass, and :data:`CACHE_FORMAT`; changed images never get stale features."""
    key = f"{CACHE_FORMAT}|{ds.name}|{set_digest(ds)}|{mean.tolist()}|{std.tolist()}|{precision}|{device_type}"
    prep = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = ds.name.replace("/", "_").replace(":", "_")
    return Path(cache_dir) / checkpoint_digest(checkpoint) / f"{slug}-{prep}.pt"


def blocks_path(path: Path) -> Path:
    """The block outputs of a cache file live in their own file, written only when they are asked for."""
    return path.with_name(path.stem + ".blocks.pt")


def _read(path: Path, n: int) -> dict | None:
    """The cache blob at ``path`` when it is complete and holds ``n`` rows; a damaged one gives one warning."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT:
            raise ValueError("written by another version")
        if any(t.shape[0] != n for t in blob["tensors"]):
            raise ValueError("row counts do not match the set")
    except Exception as err:  # noqa: BLE001 - truncated zips, garbage and foreign files all mean "recompute"
        _warn_unusable(path, err)
        return None
    return blob


def _warn_unusable(path: Path, err: Exception) -> None:
    why = (str(err).splitlines() or [""])[0][:100]
    warnings.warn(f"feature cache {path} is unusable ({type(err).__name__}: {why}); it is recomputed and "
                  "rewritten.", stacklevel=5)


def measurement_path(cache_dir: Path, checkpoint: Path, name: str, sets: list[ImageSet], mean: Tensor, std: Tensor,
                     options: str = "") -> Path:
    """Cache file of the measurement ``name`` of ``checkpoint`` on ``sets``, keyed like :func:`cache_path` (the
    checkpoint's bytes, each set's name and pixels, the normalisation) plus ``options`` (what else changes it)."""
    sets_key = "|".join(f"{ds.name}:{set_digest(ds)}" for ds in sets)
    key = f"{CACHE_FORMAT}|{name}|{sets_key}|{mean.tolist()}|{std.tolist()}|{options}"
    prep = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / checkpoint_digest(checkpoint) / f"{name}-{prep}.pt"


def cached_measurement(path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()`` through the cache: read from ``path`` when a complete copy is there, otherwise computed
    and stored (a damaged file gives one warning and is rewritten). For small results of a pass that streams
    through the network, such as the block statistics of notebook 05, so that a warm run skips the network."""
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT:
                raise ValueError("written by another version")
            return blob["value"]
        except Exception as err:  # noqa: BLE001 - as in _read: anything unreadable means "recompute"
            _warn_unusable(path, err)
    value = compute()
    write_torch({"format": CACHE_FORMAT, "value": value}, path)
    return value


def read_cache(path: Path, ds: ImageSet, blocks: bool) -> Features | None:
    """Cached features of ``ds``, or None on a miss: no file, a damaged file, or block outputs asked for but
    not stored. Block 8 is the penultimate layer, so ``features`` serves as the last block."""
    main = _read(path, len(ds))
    if main is None or not torch.equal(main["tensors"][2], ds.labels):
        return None
    logits, feats, labels = main["tensors"]
    if not blocks:
        return Features(logits, feats, labels)
    stored = _read(blocks_path(path), len(ds))
    return None if stored is None else Features(logits, feats, labels, [b.float() for b in stored["tensors"]] + [feats])


def write_cache(path: Path, f: Features) -> Features:
    """Store ``f`` (and its block outputs, when it has them, in :func:`blocks_path`); returns ``f`` as a later
    read gives it back. Blocks 1-7 are stored in float16 (half the size; their NC metrics need no more)."""
    if f.blocks is not None:
        half = [b.half() for b in f.blocks[:-1]]
        write_torch({"format": CACHE_FORMAT, "tensors": half}, blocks_path(path))
        f = Features(f.logits, f.features, f.labels, [b.float() for b in half] + [f.features])
    write_torch({"format": CACHE_FORMAT, "tensors": [f.logits, f.features, f.labels]}, path)
    return f


def _load_model(checkpoint: Path, device: torch.device) -> nn.Module:
    blob = load_checkpoint(checkpoint)
    model = build_model(blob["num_classes"], blob["config"]["width"], device)
    model.load_state_dict(blob["model"])
    return model


def at_checkpoint(cfg: Config, checkpoint: Path, splits: Splits, sets: dict[str, ImageSet], device: torch.device,
                  blocks: bool = False, precision: str = "fp32") -> dict[str, Features]:
    """Features of every set in ``sets`` under the weights of ``checkpoint``, through the on-disk cache.

    Each (checkpoint, set, precision) passes through the network once, with a progress bar (in the terminal
    only, under the runner); the model is loaded only on a miss, so a warm call never touches the network.
    Block outputs are computed and stored only when ``blocks`` is set.
    """
    cache_dir = RunPaths.of(cfg).features
    amp = Precision.for_device(device, precision).name
    model, out = None, {}
    for name, ds in sets.items():
        path = cache_path(cache_dir, checkpoint, ds, splits.mean, splits.std, amp, device.type)
        out[name] = read_cache(path, ds, blocks)
        if out[name] is None:
            if model is None:
                model = _load_model(checkpoint, device)
            f = extract(model, ds, splits.mean, splits.std, device, eval_batch(cfg, device), blocks, progress=True,
                        precision=precision)
            out[name] = write_cache(path, f)
    return out
