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

Cases: the cpu profile's network (width 16, 10,000 images, 10 classes) measured directly, and width 64 with
100 classes at two small sizes, from which the peak at 50,000 images (full profile) is extrapolated linearly in
the number of images. Goal: <= 4 GB at width 64 and 50,000 images.

    python benchmarks/bench_memory.py [--quick | --full] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import common  # noqa: I001 - puts the repository on sys.path

import json
import resource
import subprocess
import sys
import time

GB = 1024**3
# (width, images, classes): two width-16 sizes (the second is the cpu profile's 10,000 images) give the cost
# per image; one width-64 size gives the peak of the full network's pass (model + one batch of activations)
SIZES = {"quick": ((16, 1000, 10), (16, 2000, 10), (64, 512, 100)),
         "default": ((16, 5000, 10), (16, 10000, 10), (64, 1024, 100)),
         "full": ((16, 10000, 10), (16, 20000, 10), (64, 4096, 100))}
TARGET_IMAGES, TARGET_WIDTH = 50_000, 64


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_case(mode: str, width: int, n: int, K: int, batch: int, threads: int) -> dict:
    """The child: build the model and images, run the pass, return the memory figures (bytes) and seconds."""
    import torch

    from helpers.data import ImageSet, normalize
    from helpers.features import extract
    from helpers.model import ResNet18
    from helpers.stats import ClassStats

    torch.set_num_threads(threads)
    model = ResNet18(K, width).eval()
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
    return dict(mode=mode, width=width, images=n, classes=K, batch=batch, before=before, peak=peak,
                increment=peak - before, seconds=seconds, image_bytes=images.numel(),
                block_values_per_image=sum(model.block_dims))


def child(cases: list[tuple[str, int, int, int]], batch: int, threads: int) -> list[dict]:
    out = []
    for mode, width, n, K in cases:
        cmd = [sys.executable, __file__, "--case", json.dumps([mode, width, n, K, batch, threads])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"case {mode} w{width} n{n} failed:\n{proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = out[-1]
        print(f"  measured {mode:9s} width {width:2d}, {n:6,} images: peak {r['peak'] / GB:.2f} GB "
              f"({r['seconds']:.0f} s)", flush=True)
    return out


def extrapolate(a: dict, b: dict, base: dict, n: int) -> tuple[float, float]:
    """Peak bytes of ``base``'s width at ``n`` images, and the bytes per image used.

    The cost per image is measured between ``a`` and ``b`` (same width w_a, different sizes); its part beyond the
    3,072 bytes of the uint8 image is the block features, whose size is proportional to the width (30 w values),
    so it is scaled by w_base / w_a. Then peak(n) = peak(base) + (n - n_base) * per_image.
    """
    slope = (b["peak"] - a["peak"]) / (b["images"] - a["images"])
    image = a["image_bytes"] / a["images"]
    per_image = image + max(slope - image, 0.0) * base["width"] / a["width"]
    return base["peak"] + per_image * (n - base["images"]), per_image


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--batch", type=int, default=512, help="images per forward pass (default: 512, eval_batch_size)")
    p.add_argument("--case", help=__import__("argparse").SUPPRESS)
    args = p.parse_args()
    if args.case:
        mode, width, n, K, batch, threads = json.loads(args.case)
        print(json.dumps(run_case(mode, width, n, K, batch, threads)))
        return 0
    common.setup_torch(args.threads)
    m = common.header("peak memory of the earlier-layer pass: streaming vs keep-all", args)
    sizes = SIZES[common.size(args)]
    cases = [(mode, *c) for c in sizes for mode in ("streaming", "keep-all")]
    print(f"one subprocess per case, batch {args.batch}, peak = RSS high-water mark (includes ~0.3-0.5 GB of "
          "Python + torch)")
    res = child(cases, args.batch, args.threads)
    rows = [dict(mode=r["mode"], width=r["width"], images=r["images"], K=r["classes"],
                 **{"peak GB": r["peak"] / GB, "before pass GB": r["before"] / GB, "pass adds GB": r["increment"] / GB,
                    "s": r["seconds"]}) for r in res]
    common.table(rows, ["mode", "width", "images", "K", "peak GB", "before pass GB", "pass adds GB", "s"])
    extra, goals = {}, []
    print("extrapolation to the full profile: peak(width 64, 50,000) = peak(width 64, measured) + cost per image x "
          "the extra images; cost per image = 3 KiB image + (width-16 slope - 3 KiB) x 64/16")
    for mode in ("streaming", "keep-all"):
        a, b, base = (r for r in res if r["mode"] == mode)
        est, per_image = extrapolate(a, b, base, TARGET_IMAGES)
        extra[mode] = dict(peak=est, per_image=per_image)
        print(f"{mode:9s}: extrapolated peak {est / GB:.2f} GB (cost per image at width 64: {per_image / 1024:.1f} "
              f"KiB; for scale, its float32 block features are {4 * base['block_values_per_image'] / 1024:.1f} KiB)")
        goals.append(common.goal(f"{mode} peak at width 64, 50,000 images", est / GB, 4, False, " GB"))
    common.write_json(args.json, dict(machine=m, size=common.size(args), cases=res, extrapolated=extra, goals=goals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
