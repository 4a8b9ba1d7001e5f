"""Batch augmentation on tensors vs per-sample torchvision PIL transforms through a DataLoader.

A (ours): the training set stays a uint8 tensor (N, 3, 32, 32); each batch is drawn by indexing and
augmented and normalised as a whole by ``helpers.data.augment`` + ``helpers.data.normalize``
(random crop with 4-pixel zero padding, horizontal flip), in this process with torch.set_num_threads(T).

B (reference): the usual CIFAR pipeline, one PIL image per sample with torchvision's RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize, batched by a torch DataLoader with 2 worker processes
(persistent workers, so the workers' start-up is not counted against it).

Both produce the same batches (B, 3, 32, 32) float32 of the same synthetic images, one epoch per repetition,
A and B alternating; images/s from the median epoch time. Goal: A at least 10x faster than B.

    python benchmarks/bench_augment.py [--quick | --full] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import common  # noqa: I001 - puts the repository on sys.path
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from helpers import synthetic
from helpers.data import augment, normalize

SIZES = {"quick": (2000, 3), "default": (10000, 5), "full": (50000, 3)}   # images, repetitions
BATCH = 128


class PILSet(Dataset):
    """HWC uint8 images served one at a time as PIL images through a torchvision transform (reference)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def reference_loader(x: np.ndarray, y: np.ndarray, mean: list[float], std: list[float], workers: int) -> DataLoader:
    import torchvision.transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    return DataLoader(PILSet(x, y, tf), batch_size=BATCH, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=True)


def batch_epoch(images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                g: torch.Generator, aug=augment) -> int:
    """One epoch of our pipeline: index, augment, normalise whole batches; returns images produced."""
    order = torch.randperm(len(images), generator=g)
    done = 0
    for start in range(0, len(images) - BATCH + 1, BATCH):
        idx = order[start:start + BATCH]
        x = normalize(aug(images[idx], g), mean, std)                  # (B, 3, 32, 32) float32
        _ = labels[idx]
        done += x.shape[0]
    return done


def loader_epoch(loader: DataLoader) -> int:
    done = 0
    for x, _ in loader:
        done += x.shape[0]
    return done


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference (default: 2)")
    args = p.parse_args()
    common.setup_torch(args.threads)
    m = common.header("batch augmentation vs per-sample PIL transforms", args)
    n_images, repeats = SIZES[common.size(args)]
    K = 100
    x, y = synthetic.make_id("train", num_classes=K, per_class=n_images // K, seed=0)   # (N, 32, 32, 3) uint8
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()                       # (N, 3, 32, 32) uint8
    labels = torch.from_numpy(y)
    mean = images.float().mean((0, 2, 3)) / 255
    std = (images.float() / 255).std((0, 2, 3))
    loader = reference_loader(x, y, mean.tolist(), std.tolist(), args.workers)
    g = torch.Generator().manual_seed(0)

    xa = normalize(augment(images[:BATCH], g), mean, std)
    xb, _ = next(iter(loader))
    if xa.shape != xb.shape or xa.dtype != xb.dtype:
        raise SystemExit(f"pipelines disagree: {tuple(xa.shape)} {xa.dtype} vs {tuple(xb.shape)} {xb.dtype}")

    n_epoch = (len(images) // BATCH) * BATCH
    times = common.interleaved({"batch": lambda: batch_epoch(images, labels, mean, std, g),
                                "pil": lambda: loader_epoch(loader)},
                               repeats=repeats, warmup=1)
    ta, tb = (common.median(times[k]) for k in ("batch", "pil"))
    print(f"{len(images):,} synthetic CIFAR-sized images, batch {BATCH}, {n_epoch:,} images per epoch, "
          f"{repeats} interleaved epochs each (after one warm-up), medians:")
    rows = [dict(pipeline=f"A: helpers.data.augment + normalize on uint8 batches ({m['threads']} threads)",
                 **{"s/epoch": ta, "range": common.spread(times["batch"]), "images/s": n_epoch / ta}),
            dict(pipeline=f"B: torchvision PIL transforms, DataLoader {args.workers} workers",
                 **{"s/epoch": tb, "range": common.spread(times["pil"]), "images/s": n_epoch / tb})]
    common.table(rows, ["pipeline", "s/epoch", "range", "images/s"])
    ratio = tb / ta
    print(f"ratio A/B (images/s): {ratio:.1f}x")
    g_ = common.goal("speed-up of batch augmentation", ratio, 10, unit="x")
    common.write_json(args.json, dict(machine=m, size=common.size(args), images=len(images), batch=BATCH,
                                      repeats=repeats, workers=args.workers, seconds=times,
                                      images_per_s={"batch": n_epoch / ta, "pil": n_epoch / tb},
                                      ratio=ratio, goal=g_))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
