"""Inference batch size on the CPU: images per second of the feature pass, and whether the outputs change.

``helpers.features.extract`` (the pass behind every feature, every accuracy and the earlier-layer statistics)
runs a seeded ResNet-18 of the ``smoke`` width (8) and of the ``cpu`` width (16), in eval mode, over the same
seeded images, once with each batch size; the batch sizes are timed in alternation (``common.interleaved``).

1. Throughput per batch size (images per second, median of the rounds).
2. Identity: the logits and features of every batch size against those of batch 512 (the old default),
   element for element (``torch.equal``) and as the largest absolute difference.

Goal: the CPU default of ``helpers.device.EVAL_BATCH`` (128) is >= 1.3x as fast as batch 512 at width 16,
with bit-identical outputs.

    python benchmarks/bench_eval_batch.py [--quick | --full] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import common  # noqa: I001 - puts the repository on sys.path
import torch

from helpers.data import ImageSet
from helpers.device import EVAL_BATCH
from helpers.features import extract
from helpers.model import build_model

BATCHES = (64, 128, 256, 512)


def _images(n: int) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return ImageSet("bench", images, torch.zeros(n, dtype=torch.long), ["0"])


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.setup_torch(args.threads)
    machine = common.header("inference batch size on the CPU", args)
    n, repeats = (1024, 2) if args.quick else (8192, 3) if args.full else (4096, 3)
    ds, mean, std, cpu = _images(n), torch.full((3,), 0.5), torch.full((3,), 0.25), torch.device("cpu")
    rows, out = [], {}
    for width in (8, 16):
        torch.manual_seed(0)
        model = build_model(100, width).eval()
        passes = {b: (lambda b=b, m=model: extract(m, ds, mean, std, cpu, b)) for b in BATCHES}
        times = common.interleaved(passes, repeats)
        ref = extract(model, ds, mean, std, cpu, 512)
        for b in BATCHES:
            f = extract(model, ds, mean, std, cpu, b)
            diff = max((f.logits - ref.logits).abs().max().item(), (f.features - ref.features).abs().max().item())
            same = torch.equal(f.logits, ref.logits) and torch.equal(f.features, ref.features)
            rows.append(dict(width=width, batch=b, images_per_s=n / common.median(times[b]), identical=same,
                             max_abs_diff=diff))
        out[width] = {r["batch"]: r for r in rows if r["width"] == width}
    common.table(rows, ["width", "batch", "images_per_s", "identical", "max_abs_diff"])
    default = EVAL_BATCH["cpu"]
    speedup = out[16][default]["images_per_s"] / out[16][512]["images_per_s"]
    goals = [common.goal(f"width-16 feature pass, batch {default} vs 512", speedup, 1.3, unit="x")]
    identical = all(r["identical"] for r in rows)
    common.result("outputs of every batch size equal to batch 512", "bit-identical" if identical else
                  f"differ by up to {max(r['max_abs_diff'] for r in rows):.2g}")
    common.write_json(args.json, dict(machine=machine, rows=rows, goals=goals, identical=identical))


if __name__ == "__main__":
    main()
