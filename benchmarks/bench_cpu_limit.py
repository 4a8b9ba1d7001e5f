"""CPU training against the machine's limit: the float32 peak, the training step's achieved rate, their ratio,
and what could raise it (issue 17, point 5).

1. Peak: a large float32 matrix product (4096 x 4096 by 4096 x 4096) on 1 and on 2 threads, GFLOP/s; the
   bfloat16 product of the same size beside it (what the CPU's bf16 units give, if it has them).
2. The training step of the ``cpu`` profile's network (ResNet-18 width 16, 100 classes, batch 128, SGD with
   Nesterov momentum, float32): ``helpers.train.make_step`` on one fixed batch, timed over steps; GFLOP/s from
   ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward, convolutions and matrix products), and its
   ratio to the peak of as many threads.
3. Variants, each side by side with the default in one interleaved run: 1 vs 2 threads, channels_last memory
   format, batch 256, bfloat16 autocast on the CPU; and for inference (feature extraction, batch 512) eager vs
   ``torch.compile``.

No goal is set for the ratio; the script prints it so that a change of the training code can be judged
against the machine, and which variant (if any) a measured ratio supports.

    python benchmarks/bench_cpu_limit.py [--quick] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import time

import common  # noqa: I001 - puts the repository on sys.path
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from helpers import config, train
from helpers.device import Precision
from helpers.model import ResNet18

K, WIDTH = 100, 16
SIZES = {"quick": (1024, 3, 2), "default": (4096, 8, 3), "full": (4096, 16, 5)}   # matmul n, steps, repeats


def matmul_rate(n: int, dtype: torch.dtype, threads: int, repeats: int = 3) -> float:
    """Best-of GFLOP/s of an (n x n) @ (n x n) product on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_flops(batch: int) -> float:
    """Forward + backward FLOPs of one training step of width 16 (convs and matmuls)."""
    model = ResNet18(K, WIDTH).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, K, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops())


def training_steps(batch: int, steps: int, channels_last: bool = False, bf16: bool = False):
    """A function running ``steps`` training steps of ``helpers.train.make_step`` on one fixed batch."""
    cfg = config.make_config("cpu", batch_size=batch, augment=False)
    device = torch.device("cpu")
    model = train.make_model(cfg, K, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt, _ = train.make_optimiser(cfg, model)
    amp = Precision.for_device(device, "bf16" if bf16 else "fp32")
    stats = (torch.full((3,), 0.5), torch.full((3,), 0.25))
    step = train.make_step(model, stats, amp, channels_last=channels_last)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, K, (batch,), generator=g)

    def run() -> None:
        for _ in range(steps):
            loss, _ = step(images, labels, None)
            opt.zero_grad(set_to_none=True)
            amp.backward_step(loss, opt)
    return run


def inference(batch: int, steps: int, compiled: bool):
    """A function extracting features of ``steps`` batches (eval mode, no grad), eager or compiled."""
    model = ResNet18(K, WIDTH).eval()
    fn = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, 32, 32)

    @torch.no_grad()
    def run() -> None:
        for _ in range(steps):
            fn(x)
    return run


def main() -> int:
    args = common.parser(__doc__).parse_args()
    threads = common.setup_torch(args.threads)
    m = common.header("CPU training against the machine's peak", args)
    n, steps, repeats = SIZES[common.size(args)]
    peaks = {(t, str(d).removeprefix("torch.")): matmul_rate(n, d, t) for t in (1, 2)
             for d in (torch.float32, torch.bfloat16)}
    torch.set_num_threads(threads)
    common.table([{"threads": t, "dtype": d, "GFLOP/s": v} for (t, d), v in peaks.items()],
                 ["threads", "dtype", "GFLOP/s"])
    print(f"(best of 3 products of {n} x {n} by {n} x {n})")

    variants = {
        f"default: fp32, batch 128, {threads} threads": training_steps(128, steps),
        "channels_last": training_steps(128, steps, channels_last=True),
        "batch 256 (half the steps)": training_steps(256, max(1, steps // 2)),
        "bf16 autocast": training_steps(128, steps, bf16=True),
    }
    times = common.interleaved(variants, repeats=repeats, warmup=1)
    torch.set_num_threads(1)
    one = common.interleaved({"1 thread": training_steps(128, steps)}, repeats=repeats, warmup=1)["1 thread"]
    torch.set_num_threads(threads)
    f128, f256 = step_flops(128), step_flops(256)
    rows = []
    for name, ts in [*times.items(), ("default on 1 thread", one)]:
        batch, n_steps = (256, max(1, steps // 2)) if name.startswith("batch 256") else (128, steps)
        flops = (f256 if batch == 256 else f128) * n_steps
        t = common.median(ts)
        peak = peaks[(1 if "1 thread" in name else threads, "float32")]
        rows.append({"variant": name, "images/s": batch * n_steps / t, "GFLOP/s": flops / t / 1e9,
                     "of fp32 peak": flops / t / 1e9 / peak, "s": common.spread(ts)})
    print(f"\ntraining step, ResNet-18 width {WIDTH}, {K} classes, {steps} steps per repetition, {repeats} "
          "interleaved repetitions after one warm-up; medians")
    common.table(rows, ["variant", "images/s", "GFLOP/s", "of fp32 peak", "s"])
    print(f"(forward + backward {f128 / 128 / 1e6:.1f} MFLOP per image, convs and matmuls; 'of fp32 peak' uses the "
          "float32 product peak of as many threads)")

    infer = common.interleaved({"eager": inference(512, steps, False), "torch.compile": inference(512, steps, True)},
                               repeats=repeats, warmup=1)
    irows = [{"inference": k, "images/s": 512 * steps / common.median(v), "s": common.spread(v)}
             for k, v in infer.items()]
    print("\nfeature extraction, batch 512, eval mode:")
    common.table(irows, ["inference", "images/s", "s"])
    default = rows[0]
    share = 100 * default["of fp32 peak"]
    print(f"\nthe training step reaches {default['GFLOP/s']:.0f} GFLOP/s = {share:.0f} % of the {threads}-thread "
          f"float32 peak ({peaks[(threads, 'float32')]:.0f} GFLOP/s)")
    common.result(f"training step, share of the {threads}-thread float32 peak", f"{share:.0f} % "
                  f"({default['GFLOP/s']:.0f} of {peaks[(threads, 'float32')]:.0f} GFLOP/s)")
    common.write_json(args.json, dict(machine=m, size=common.size(args), peaks={f"{t} {d}": v for (t, d), v in
                                      peaks.items()}, training=rows, inference=irows, step_flops_128=f128))
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
