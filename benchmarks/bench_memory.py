"""Peak memory of the earlier-layer pass (notebook 05): streaming class statistics vs keeping all block features.

The pass runs the network once over a training set and needs, for each of the 8 residual blocks, the class
statistics of its globally pooled output (counts, class sums, second moment: ``helpers.stats.ClassStats``).

* streaming: one ``ClassStats`` per block, updated batch by batch inside the forward loop; the pooled outputs
  of a batch are dropped after the update;
* keep-all: the project's current path (``helpers.trajectory.layers_at``): ``helpers.features.extract(...,
  blocks=True)`` keeps every block's pooled outputs of all images (float32, 30 x width values per image), then
  each block's ``ClassStats`` is built from its whole (N, C_l) tensor.

Each case runs in a fresh subprocess; its peak is the RSS high-water mark ``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` (tracemalloc does not see torch's allocations, so it is not used). The images are seeded random
uint8 tensors of CIFAR's shape, so no data set is needed (the memory does not depend on the pixel values).

Cases: the cpu profile's network (width 16, 10,000 images, 10 classes) measured directly. The full profile
(width 64, 50,000 images, 100 classes) would take an hour of convolutions here, so its peak is estimated from
two cheaper runs: the real width-64 network on ~1,000 images (the memory of one batch of activations) and a
stub network with the real output shapes but no convolutions on all 50,000 images (the memory that grows
with the number of images: images, stored block features, statistics); estimate = stub peak + real increment,
meant as an upper bound (the two do not peak together) up to allocator noise of ~0.1 GB. The same estimate is
checked against the direct cpu-profile measurement.
Goal: <= 4 GB at width 64 and 50,000 images.

    python benchmarks/bench_memory.py [--quick | --full] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import common  # noqa: I001 - puts the repository on sys.path

GB = 1024**3
TARGET_IMAGES, TARGET_WIDTH = 50_000, 64
# images of the direct cpu-profile case, of the small real passes, and of the full-profile stub pass
SIZES = {"quick": (2_000, 512, 50_000), "default": (10_000, 1_024, 50_000), "full": (10_000, 2_048, 50_000)}


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _stub(K: int, width: int):
    """A stand-in network with the real one's output shapes and no convolutions: random logits, features and
    pooled block outputs. It isolates the memory that grows with the number of images from the activations."""
    import torch
    from torch import nn

    from helpers.model import Outputs, ResNet18

    class Stub(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block_dims = ResNet18(K, width).block_dims

        def run(self, x: torch.Tensor, blocks: bool = False) -> Outputs:
            B = x.shape[0]
            pooled = [torch.rand(B, C) for C in self.block_dims]                     # (B, C_l) each
            return Outputs(torch.rand(B, K), pooled[-1], pooled if blocks else None)

    return Stub()


def run_case(mode: str, net: str, width: int, n: int, K: int, batch: int, threads: int) -> dict:
    """The child: build the model (real or stub) and images, run the pass, return memory figures and seconds."""
    import torch

    from helpers.data import ImageSet, normalize
    from helpers.features import extract
    from helpers.model import ResNet18
    from helpers.stats import ClassStats

    torch.set_num_threads(threads)
    real = ResNet18(K, width).eval()                                 # built in both cases: its weights count
    model = real if net == "real" else _stub(K, width)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)      # (N, 3, 32, 32)
    labels = torch.arange(n) % K                                                          # (N,)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    before = _rss_bytes()
    start = time.perf_counter()
    if mode == "streaming":
        stats = [ClassStats.empty(K, C) for C in model.block_dims]
        with torch.no_grad():
            for s in range(0, n, batch):
                out = model.run(normalize(images[s:s + batch], mean, std), blocks=True)
                for st, h in zip(stats, out.blocks, strict=True):
                    st.update(h, labels[s:s + batch])
    else:
        f = extract(model, ImageSet("bench", images, labels, []), mean, std, torch.device("cpu"), batch, blocks=True)
        stats = [ClassStats.empty(K, h.shape[1]).update(h, f.labels) for h in f.blocks]
    sigma_w = [st.within_cov() for st in stats]                                          # (C_l, C_l) each
    seconds = time.perf_counter() - start
    if len(sigma_w) != 8:
        raise RuntimeError("expected 8 blocks")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024                     # Linux: KiB
    return dict(mode=mode, net=net, width=width, images=n, classes=K, batch=batch, before=before, peak=peak,
                increment=peak - before, seconds=seconds, block_values_per_image=sum(real.block_dims))


def measure(cases: list[tuple], batch: int, threads: int, repeats: int = 1) -> list[dict]:
    """Run each case in fresh subprocesses (``repeats`` times) and keep the run with the highest peak.

    The high-water mark of the same case varies between runs (by up to ~1 GB for keep-all at 50,000 images:
    glibc's allocator keeps freed blocks mapped depending on the order of frees), so the maximum is reported.
    """
    out = []
    for mode, net, width, n, K in cases:
        cmd = [sys.executable, __file__, "--case", json.dumps([mode, net, width, n, K, batch, threads])]
        runs = []
        for _ in range(repeats):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"case {mode} {net} w{width} n{n} failed:\n{proc.stderr[-2000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = max(runs, key=lambda r: r["peak"])
        r["peaks"] = [x["peak"] for x in runs]
        out.append(r)
        peaks = "/".join(f"{p / GB:.2f}" for p in r["peaks"])
        print(f"  {mode:9s} {net:4s} width {width:2d}, {n:6,} images: peak {peaks} GB ({r['seconds']:.0f} s)",
              flush=True)
    return out


def estimate(stub: dict, real_small: dict) -> float:
    """Peak of the real pass at the stub's size: the stub's peak (base, images, everything that grows with N)
    plus the real network's increment on a small set (one batch of activations). Meant as an upper bound (the
    two increments do not peak at the same moment), up to the allocator's noise of ~0.1 GB."""
    return stub["peak"] + real_small["increment"]


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--batch", type=int, default=512, help="images per forward pass (default: 512, eval_batch_size)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each stub case, the highest peak kept (default: 3)")
    p.add_argument("--case", help=__import__("argparse").SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(*json.loads(args.case))))
        return 0
    common.setup_torch(args.threads)
    m = common.header("peak memory of the earlier-layer pass: streaming vs keep-all", args)
    n_cpu, n_small, n_full = SIZES[common.size(args)]
    print(f"one subprocess per case, batch {args.batch}, peak = RSS high-water mark (includes ~0.5 GB of Python, "
          "torch and the helpers' imports)")
    extra, goals, res = {}, [], []
    for mode in ("streaming", "keep-all"):
        cpu, small16, small64 = measure([(mode, "real", 16, n_cpu, 10), (mode, "real", 16, n_small, 10),
                                         (mode, "real", 64, n_small, 100)], args.batch, args.threads)
        stub16, stub64 = measure([(mode, "stub", 16, n_cpu, 10), (mode, "stub", 64, n_full, 100)], args.batch,
                                 args.threads, repeats=args.repeats)
        res += [cpu, small16, stub16, small64, stub64]
        extra[mode] = dict(cpu_measured=cpu["peak"], cpu_estimated=estimate(stub16, small16),
                           full_estimated=estimate(stub64, small64))
    rows = [dict(mode=r["mode"], net=r["net"], width=r["width"], images=r["images"], K=r["classes"],
                 **{"peak GB": r["peak"] / GB, "before pass GB": r["before"] / GB, "pass adds GB": r["increment"] / GB,
                    "s": r["seconds"]}) for r in res]
    common.table(rows, ["mode", "net", "width", "images", "K", "peak GB", "before pass GB", "pass adds GB", "s"])
    print("estimate = stub peak at the target size (base + images + all that grows with N) + real-network increment "
          "at the small size (activations); an upper bound up to ~0.1 GB of allocator noise. Check on the cpu "
          "profile, then the full profile:")
    cols = ["mode", f"cpu w16 {n_cpu:,}: measured GB", "estimated GB", f"full w64 {n_full:,}: estimated GB"]
    common.table([dict(zip(cols, (mode, e["cpu_measured"] / GB, e["cpu_estimated"] / GB, e["full_estimated"] / GB),
                           strict=True)) for mode, e in extra.items()], cols)
    per_ckpt = (45_000 + 5_000 + 10_000) * (100 + 512 + 30 * 64) * 4                 # bytes, float32
    print(f"disk, by calculation: the feature cache keeps the block outputs of the ID sets (train, val, test: "
          f"45,000 + 5,000 + 10,000 images in the full profile), (K + D + 30 x width) float32 values per image = "
          f"{per_ckpt / GB:.2f} GB per checkpoint, {24 * per_ckpt / GB:.0f} GB if all 24 checkpoints of 200 epochs "
          "are visited")
    for mode, e in extra.items():
        goals.append(common.goal(f"{mode} peak at width 64, {n_full:,} images", e["full_estimated"] / GB, 4, False,
                                 " GB"))
    common.write_json(args.json, dict(machine=m, size=common.size(args), cases=res, extrapolated=extra, goals=goals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
