"""Peak memory of notebook 05's pass (``helpers.sweep.layers_at``) at two training-set sizes: streaming vs keep-all.

* streaming (the project's path): ``sweep.block_stats(sweep.pooled_batches(...))`` accumulates one
  ``ClassStats`` per residual block batch by batch inside the inference loop, then ``sweep.ncc_accuracy`` makes
  a second streaming pass for the NCC; a batch's block outputs are dropped after use;
* keep-all (the path before issue 12): ``features.extract(..., blocks=True)`` keeps every block's pooled
  outputs of all images, then each block's ``ClassStats`` is built from its whole (N, C_l) tensor.

Each case runs in a fresh subprocess; "pass adds" is the RSS high-water mark (``ru_maxrss``) minus the RSS
just before the pass, with the images already in memory (tracemalloc does not see torch's allocations). The
network is a stand-in with the real width-64 output shapes (feature map (B, 512, 4, 4), 8 pooled blocks of
64..512 channels) and no convolutions, so the cases take seconds; what is measured is the sweep's own code
(loop, float16 rounding, class statistics, NCC) and everything that could grow with N. The convolutions'
activations of one batch add the same constant to both modes. Goal: streaming adds the same at both sizes.

    python benchmarks/bench_memory.py [--quick | --full] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import common  # noqa: I001 - puts the repository on sys.path

MB = 1024**2
SIZES = {"quick": (1_000, 4_000), "default": (2_000, 8_000), "full": (5_000, 20_000)}
K, WIDTH, BATCH = 100, 64, 512


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _stub():
    """The width-64 ResNet-18's outputs without its convolutions: random feature map and pooled blocks."""
    import torch
    from torch import nn

    from helpers.model import ResNet18

    class Stub(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block_dims, self.fc = ResNet18(K, WIDTH).block_dims, nn.Linear(8 * WIDTH, K)

        def body(self, x: torch.Tensor, blocks: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
            B = x.shape[0]
            pooled = [torch.rand(B, C) for C in self.block_dims]                    # (B, C_l) each
            return pooled[-1][:, :, None, None].expand(B, 8 * WIDTH, 4, 4), pooled if blocks else []

    return Stub().eval()


def run_case(mode: str, n: int, threads: int) -> dict:
    """The child: images and labels of ``n`` training images, then one pass in ``mode``."""
    import torch

    from helpers import features, sweep
    from helpers.data import ImageSet, Splits
    from helpers.stats import ClassStats

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    ds = ImageSet("bench", torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % K,
                  [])
    splits = Splits(ds, ds, ds, torch.full((3,), 0.5), torch.full((3,), 0.25))
    model, cpu = _stub(), torch.device("cpu")
    before, start = _rss_bytes(), time.perf_counter()
    with torch.no_grad():
        if mode == "streaming":
            stats = sweep.block_stats(sweep.pooled_batches(model, ds, splits, cpu, BATCH), K)
            sweep.ncc_accuracy(sweep.pooled_batches(model, ds, splits, cpu, BATCH), [s.means() for s in stats])
        else:
            f = features.extract(model, ds, splits.mean, splits.std, cpu, BATCH, blocks=True)
            stats = [ClassStats.empty(K, h.shape[1]).update(h, f.labels) for h in f.blocks]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024                     # Linux: KiB
    return dict(mode=mode, images=n, before=before, peak=peak, increment=peak - before,
                seconds=time.perf_counter() - start, blocks=len(stats))


def measure(mode: str, n: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps([mode, n, threads])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case {mode} n{n} failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {mode:9s} {n:6,} images: pass adds {r['increment'] / MB:7.1f} MB ({r['seconds']:.0f} s)", flush=True)
    return r


def main() -> int:
    p = common.parser(__doc__)
    p.add_argument("--case", help=__import__("argparse").SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(*json.loads(args.case))))
        return 0
    m = common.header("peak memory of notebook 05's pass: streaming vs keep-all, two training-set sizes", args)
    small, large = SIZES[common.size(args)]
    res = [measure(mode, n, args.threads) for mode in ("streaming", "keep-all") for n in (small, large)]
    common.table([dict(mode=r["mode"], images=r["images"], **{"before pass MB": r["before"] / MB,
                                                              "pass adds MB": r["increment"] / MB, "s": r["seconds"]})
                  for r in res], ["mode", "images", "before pass MB", "pass adds MB", "s"])
    growth = {mode: (res[i + 1]["increment"] - res[i]["increment"]) / MB for i, mode in ((0, "streaming"),
                                                                                        (2, "keep-all"))}
    print(f"growth from {small:,} to {large:,} images: " + ", ".join(f"{k} {v:+.1f} MB" for k, v in growth.items())
          + f" (keep-all stores {30 * WIDTH} block values per image: {(large - small) * 30 * WIDTH * 4 / MB:.0f} MB)")
    goals = [common.goal("streaming growth", growth["streaming"], 16, False, " MB")]
    common.write_json(args.json, dict(machine=m, size=common.size(args), cases=res, growth_mb=growth, goals=goals))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
