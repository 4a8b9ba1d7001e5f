"""The one loop over a data set: logits, penultimate features and pooled block outputs, cached on disk.

Scores and collapse metrics take the tensors this module returns and never call the model
(as pytorch-ood's ``fit_features``/``predict_features`` and neural-collapse's accumulate-then-measure split).
The cache key covers the checkpoint's content, the data set and the preprocessing, so a warm re-run of
notebooks 02–05 does not touch the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import load as load_checkpoint
from .config import Config
from .data import ImageSet, Splits, normalize
from .device import Precision
from .model import build_model


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


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (first 16 hex digits): the checkpoint part of the cache key."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cache_path(cache_dir: Path, checkpoint: Path, ds: ImageSet, mean: Tensor, std: Tensor) -> Path:
    """Cache file of ``ds`` under ``checkpoint``: keyed by the checkpoint's bytes, the set's name and pixels
    and the normalisation statistics (changed images never get stale features)."""
    pixels = hashlib.blake2b(ds.images.contiguous().numpy().tobytes(), digest_size=8).hexdigest()
    prep = hashlib.sha256(f"{ds.name}|{pixels}|{mean.tolist()}|{std.tolist()}".encode()).hexdigest()[:12]
    return Path(cache_dir) / file_digest(checkpoint) / f"{ds.name.replace('/', '_').replace(':', '_')}-{prep}.pt"


def read_cache(path: Path, blocks: bool) -> Features | None:
    """Cached features, or None when missing (or when block outputs are asked for but were not stored)."""
    if not path.exists():
        return None
    blob = torch.load(path, weights_only=True)
    if blocks and blob.get("blocks") is None:
        return None
    stored = [b.float() for b in blob["blocks"]] + [blob["features"]] if blocks else None
    return Features(blob["logits"], blob["features"], blob["labels"], stored)


def write_cache(path: Path, f: Features) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # Blocks 1-7 in float16 on disk (half the size; NC metrics of earlier layers do not need more); block 8 is
    # the penultimate layer, stored once, in float32, as ``features``.
    blocks = [b.half() for b in f.blocks[:-1]] if f.blocks is not None else None
    torch.save({"logits": f.logits, "features": f.features, "labels": f.labels, "blocks": blocks}, tmp)
    tmp.replace(path)


def at_checkpoint(cfg: Config, checkpoint: Path, splits: Splits, sets: dict[str, ImageSet], device: torch.device,
                  blocks: bool = False) -> dict[str, Features]:
    """Features of every set in ``sets`` under the weights of ``checkpoint``, through the on-disk cache.

    Each (checkpoint, set) passes through the network once; the model is loaded only on a cache miss, so a
    warm call never touches the network. A file that holds block outputs also serves calls without them.
    """
    cache_dir = cfg.run_dir() / "features"
    model, out = None, {}
    for name, ds in sets.items():
        path = cache_path(cache_dir, checkpoint, ds, splits.mean, splits.std)
        out[name] = read_cache(path, blocks)
        if out[name] is None:
            if model is None:
                blob = load_checkpoint(checkpoint)
                model = build_model(blob["num_classes"], blob["config"]["width"], device)
                model.load_state_dict(blob["model"])
            # Labelled (ID) sets always keep the block outputs: the pass costs the same, and notebook 5 needs them.
            keep_blocks = blocks or bool((ds.labels >= 0).all())
            f = extract(model, ds, splits.mean, splits.std, device, cfg.eval_batch_size, keep_blocks)
            write_cache(path, f)
            out[name] = f if blocks else Features(f.logits, f.features, f.labels)
    return out
