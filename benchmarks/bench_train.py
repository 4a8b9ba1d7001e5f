"""Training throughput on the CPU: the project's loop vs a plain reference loop, plus an H100 estimate.

A (ours): ``helpers.train.train_epoch``: the training set is one uint8 tensor, batches are drawn by indexing,
augmented and normalised as whole batches, loss and accuracy are accumulated as tensors (no ``.item()`` in the
step loop).

B (reference): the textbook loop: a torch DataLoader (2 worker processes, persistent) applying torchvision's
per-sample PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), and
``loss.item()`` plus ``(argmax == y).sum().item()`` after every step.

Same model (CIFAR ResNet-18 of the given width, same initial weights), batch size 128, SGD with Nesterov
momentum and weight decay, cross-entropy, augmentation on; one epoch over N synthetic images per repetition,
A and B alternating; images/s from the median epoch time.

Then the compute part of an H100 estimate for the full profile (ResNet-18 width 64, 50,000 images, batch 128):
forward + backward FLOPs per image counted by torch.utils.flop_counter.FlopCounterMode on the real model
(convolutions and matrix products only), times 50,000, at 30-50 % of the bf16 peak. This is a lower bound;
the memory- and launch-bound parts of a step are estimated in benchmarks/README.md (section "GPU") and
measured on a GPU by benchmarks/bench_gpu.py.

    python benchmarks/bench_train.py [--quick | --full] [--threads 1] [--widths 8 16] [--json out.json]
"""

from __future__ import annotations

import copy

import common  # noqa: I001 - puts the repository on sys.path
import torch
import torch.nn.functional as F
from bench_augment import reference_loader
from torch.utils.flop_counter import FlopCounterMode

from helpers import config, synthetic, train
from helpers.data import ImageSet, Splits
from helpers.model import ResNet18

SIZES = {"quick": (1280, (8,), 2), "default": (2560, (8, 16), 3), "full": (10000, (8, 16), 3)}  # N, widths, reps
H100_BF16_DENSE = 989.4e12          # FLOP/s, H100 SXM dense bf16 tensor-core peak (NVIDIA data sheet)
UTILISATION = {"convolutions alone at 30-50 % of peak (a lower bound: memory- and launch-bound parts are in "
               "benchmarks/README.md, section GPU)": (0.30, 0.50)}


def reference_epoch(model: torch.nn.Module, loader, opt: torch.optim.Optimizer) -> tuple[float, float]:
    """The plain loop: per-sample PIL pipeline, ``.item()`` after every step."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * y.shape[0]
        correct += (logits.argmax(1) == y).sum().item()
        seen += y.shape[0]
    return loss_sum / seen, correct / seen


def flops_per_image(width: int, num_classes: int = 100, batch: int = 4) -> float:
    """Forward + backward FLOPs of one training image, counted on the real model (convs and matmuls)."""
    model = ResNet18(num_classes, width).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, num_classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def bench_width(width: int, x, y, repeats: int, workers: int) -> dict:
    """Interleaved epochs of A and B at one width; returns the medians and images/s."""
    K = int(y.max()) + 1
    cfg = config.make_config("smoke", width=width, batch_size=128, augment=True, num_classes=K)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()                       # (N, 3, 32, 32) uint8
    labels = torch.from_numpy(y)
    mean, std = images.float().mean((0, 2, 3)) / 255, (images.float() / 255).std((0, 2, 3))
    ds = ImageSet("bench", images, labels, [str(c) for c in range(K)])
    splits = Splits(ds, ds, ds, mean, std)
    device = torch.device("cpu")
    model_a = train.make_model(cfg, K, device)
    model_b = copy.deepcopy(model_a)
    opt_a, _ = train.make_optimiser(cfg, model_a)
    opt_b, _ = train.make_optimiser(cfg, model_b)
    g = torch.Generator().manual_seed(0)
    loader = reference_loader(x, y, mean.tolist(), std.tolist(), workers)
    stats = (splits.mean, splits.std)
    times = common.interleaved({"ours": lambda: train.train_epoch(model_a, images, labels, stats, opt_a, g, cfg,
                                                                  device, True),
                                "reference": lambda: reference_epoch(model_b, loader, opt_b)},
                               repeats=repeats, warmup=1)
    n_epoch = (len(images) // cfg.batch_size) * cfg.batch_size
    return dict(width=width, images=n_epoch, seconds=times,
                ours=n_epoch / common.median(times["ours"]), reference=n_epoch / common.median(times["reference"]))


def h100_estimate(images: int = 50_000) -> dict:
    f = flops_per_image(64, 100)
    out = dict(flops_per_image=f, flops_per_epoch=f * images, peak=H100_BF16_DENSE, ranges={})
    print(f"\nH100 ESTIMATE (not a measurement; no GPU here), full profile: ResNet-18 width 64, {images:,} images, "
          "batch 128, bf16")
    print(f"forward+backward FLOPs per image (FlopCounterMode, convs + matmuls): {f / 1e9:.3f} GFLOP; "
          f"per epoch {f * images / 1e12:.1f} TFLOP")
    for label, (lo, hi) in UTILISATION.items():
        slow, fast = f * images / (lo * H100_BF16_DENSE), f * images / (hi * H100_BF16_DENSE)
        out["ranges"][label] = (fast, slow)
        print(f"  assumed sustained throughput {label} of {H100_BF16_DENSE / 1e12:.0f} TFLOP/s: "
              f"{fast:.2f}–{slow:.2f} s/epoch, {200 * fast / 60:.1f}–{200 * slow / 60:.1f} min for 200 epochs")
    return out


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--widths", type=int, nargs="+", help="ResNet-18 widths to time (default by size: 8 16)")
    p.add_argument("--images", type=int, help="training images per epoch (default by size)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference (default: 2)")
    args = p.parse_args()
    common.setup_torch(args.threads)
    m = common.header("training throughput: train_epoch vs a plain DataLoader loop", args)
    n, widths, repeats = SIZES[common.size(args)]
    n, widths = args.images or n, tuple(args.widths or widths)
    K = 100
    x, y = synthetic.make_id("train", num_classes=K, per_class=max(2, n // K), seed=0)   # (N, 32, 32, 3) uint8
    print(f"{len(x):,} synthetic images, {K} classes, batch 128, {repeats} interleaved epochs each after one "
          "warm-up; medians")
    rows, results = [], []
    for w in widths:
        r = bench_width(w, x, y, repeats, args.workers)
        f = flops_per_image(w, K)
        results.append(dict(r, flops_per_image=f))
        rows.append(dict(width=w, **{"ours img/s": r["ours"], "reference img/s": r["reference"],
                                     "ratio": r["ours"] / r["reference"],
                                     "ours s/epoch": common.spread(r["seconds"]["ours"]),
                                     "ref s/epoch": common.spread(r["seconds"]["reference"]),
                                     "ours GFLOP/s": r["ours"] * f / 1e9}))
    common.table(rows, ["width", "ours img/s", "reference img/s", "ratio", "ours s/epoch", "ref s/epoch",
                        "ours GFLOP/s"])
    print("(s/epoch columns: min–max over the repetitions; GFLOP/s counts convs + matmuls only)")
    for row in rows:
        common.result(f"train_epoch vs the plain loop, width {row['width']}", f"{row['ratio']:.2f}x "
                      f"({row['ours img/s']:.0f} vs {row['reference img/s']:.0f} images/s)")
    est = h100_estimate()
    common.write_json(args.json, dict(machine=m, size=common.size(args), results=results, h100=est))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
