"""The GPU check: training epochs of the full profile, feature extraction and the scores, measured on a CUDA device.

On a CUDA machine it times, on CIFAR-sized random images (the timing does not depend on the pixels, so no data
set is needed):

* training epochs of the ``full`` profile (ResNet-18 width 64, 100 classes, 45,000 images, batch 128) in the
  precision :mod:`helpers.device` chooses (bf16 at compute capability >= 8.0, fp16 with a gradient scaler below),
  channels_last, eager and with ``torch.compile`` (the whole step compiled, ``--compile-mode``), the step loop
  run under ``torch.cuda.set_sync_debug_mode("error")``, so any host-device synchronisation inside it fails;
* ``helpers.features.extract`` over 10,000 test images;
* every score of ``helpers.ood.SCORES`` (fit on 45,000 training features, score 10,000) on GPU tensors;

and prints each s/epoch beside the estimate for that GPU in ``benchmarks/README.md`` (section "GPU") with the
ratio. It keeps to a 5-minute budget (``--budget``): a part that would start after the budget is skipped and
said so. On a machine without CUDA it prints one line and exits at once (before importing torch when the
kernel shows no GPU).

    python benchmarks/bench_gpu.py [--quick] [--epochs 2] [--precision auto] [--compile-mode default] [--json out.json]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import common  # noqa: I001 - puts the repository on sys.path

README = Path(__file__).resolve().parent / "README.md"
MARK = "<!-- gpu-estimates -->"
FULL = dict(images=45_000, test=10_000, classes=100, width=64, batch=128)
QUICK = dict(images=5_120, test=2_048, classes=100, width=64, batch=128)
NO_CUDA = "bench_gpu: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU."


def gpu_nodes(dev: Path = Path("/dev")) -> bool:
    """Whether the kernel shows a GPU (NVIDIA or ROCm device nodes): checked before importing torch, so that a
    machine without one is told so at once."""
    return any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per variant, after one warm-up (default 2)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--budget", type=float, default=280.0, help="seconds; later parts are skipped (default 280)")
    p.add_argument("--readme", type=Path, default=README, help="where the estimates table is read from")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}.")
    return args


def estimates(text: str) -> dict[str, dict[str, tuple[float, float]]]:
    """The README's estimates table (after ``MARK``): {GPU name part: {"eager"|"compiled": (fast, slow) s/epoch}}."""
    if MARK not in text:
        return {}
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for line in text.split(MARK, 1)[1].strip().splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        ranges = [re.fullmatch(r"([\d.]+)\s*[–-]\s*([\d.]+)(?: s)?", c) for c in cells[1:3]]
        pairs = zip(("eager", "compiled"), ranges, strict=False)
        rows[cells[0]] = {k: (float(m[1]), float(m[2])) for k, m in pairs if m}
    return rows


def estimate_for(name: str, table: dict[str, dict]) -> tuple[str, dict[str, tuple[float, float]]] | None:
    """The row whose key occurs in the device name (``NVIDIA H100 80GB HBM3`` → ``H100``), longest key first."""
    for key in sorted(table, key=len, reverse=True):
        if key.lower() in name.lower():
            return key, table[key]
    return None


def ratio_text(measured: float, estimate: tuple[float, float] | None) -> str:
    """``1.20 s/epoch; estimate 1.0–1.5 s; measured/estimate 0.80–1.20 (within the estimate)``."""
    text = f"{measured:.3g} s/epoch"
    if estimate is None:
        return text + "; no estimate for this GPU in benchmarks/README.md"
    lo, hi = estimate
    verdict = "within the estimate" if lo <= measured <= hi else "faster than estimated" if measured < lo \
        else "slower than estimated"
    return f"{text}; estimate {lo:g}–{hi:g} s; measured/estimate {measured / hi:.2f}–{measured / lo:.2f} ({verdict})"


def scaled_epoch(seconds: float, images: int) -> float:
    """Seconds for the full profile's epoch of 45,000 images from a timed pass over ``images``."""
    return seconds * FULL["images"] / images


# ------------------------------------------------------------------------------------------ on the GPU only
def _setup(args, size: dict):
    import torch

    from helpers import config, train
    from helpers.device import Precision, configure_backends

    device = torch.device("cuda")
    cfg = config.make_config("full", precision=args.precision, compile_mode=args.compile_mode)
    configure_backends(cfg, device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (size["images"], 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, size["classes"], (size["images"],), generator=g).to(device)
    stats = (torch.tensor([0.507, 0.487, 0.441], device=device), torch.tensor([0.267, 0.256, 0.276], device=device))
    model = train.make_model(cfg, size["classes"], device)
    return cfg, device, images, labels, stats, model, Precision.for_device(device, cfg.precision)


def time_training(args, size: dict, compiled: bool) -> dict:
    """Warm-up epoch, then ``args.epochs`` timed epochs; the step loop under sync debug mode "error"."""
    import torch

    from helpers import train

    cfg, device, images, labels, stats, model, amp = _setup(args, size)
    opt, _ = train.make_optimiser(cfg, model)
    step = train.make_step(model, stats, amp, True, cfg.compile_mode if compiled else None)
    g, times = torch.Generator().manual_seed(0), []
    for epoch in range(args.epochs + 1):
        order, params = train.epoch_draws(images.shape[0], g, device, augment=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch.cuda.set_sync_debug_mode("error" if epoch else "default")   # the warm-up compiles and autotunes
        try:
            loss_sum, _, seen = train.run_steps(step, images, labels, order, params, opt, amp, cfg.batch_size)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return dict(precision=amp.name, reason=amp.reason, compiled=compiled, seconds=times[1:],
                loss=(loss_sum / seen).item(), model=model, stats=stats)


def time_extraction(model, stats, size: dict, precision: str) -> dict:
    import torch

    from helpers.data import ImageSet
    from helpers.features import extract

    g = torch.Generator().manual_seed(1)
    ds = ImageSet("bench", torch.randint(0, 256, (size["test"], 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.zeros(size["test"], dtype=torch.long), [])
    device, times = torch.device("cuda"), []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        extract(model, ds, stats[0].cpu(), stats[1].cpu(), device, 512, precision=precision)
        times.append(time.perf_counter() - start)
    return dict(seconds=times[1:], images=size["test"])


def time_scores(size: dict) -> dict[str, float | str]:
    """fit + score of every score on GPU tensors with class structure; a failing score is reported, not fatal."""
    import torch

    from helpers import ood

    g = torch.Generator(device="cuda").manual_seed(2)
    K, D, n, m = size["classes"], 512, size["images"], size["test"]
    means = torch.randn(K, D, device="cuda", generator=g) * 2
    y = torch.arange(n, device="cuda") % K
    h = (means[y] + torch.randn(n, D, device="cuda", generator=g)).relu()             # (N, D)
    W, b = torch.randn(K, D, device="cuda", generator=g) / D ** 0.5, torch.zeros(K, device="cuda")
    h_test = (means[torch.arange(m, device="cuda") % K] + torch.randn(m, D, device="cuda", generator=g)).relu()
    out: dict[str, float | str] = {}
    for name, cls in ood.SCORES.items():
        start = time.perf_counter()
        try:
            cls().fit(h, h @ W.T + b, y, W, b).score(h_test, h_test @ W.T + b)
            torch.cuda.synchronize()
            out[name] = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - report and go on with the next score
            out[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not gpu_nodes():
        print(NO_CUDA)
        return 0
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    return run_on_gpu(args)


def run_on_gpu(args: argparse.Namespace) -> int:
    import torch

    from helpers.device import device_name

    began, size = time.perf_counter(), QUICK if args.quick else FULL
    common.setup_torch(args.threads)
    m = common.header("GPU check: full-profile training, extraction, scores", args)
    name = device_name(torch.device("cuda"))
    row = estimate_for(name, estimates(args.readme.read_text() if args.readme.exists() else ""))
    print(f"device {name}; estimate row: {row[0] if row else 'none'}; {size['images']:,} training images per epoch")
    results: dict = dict(machine=m, device=name, size=size)
    for compiled in (False, True):
        if compiled and args.no_compile or time.perf_counter() - began > args.budget:
            print(f"skipped training {'compiled' if compiled else 'eager'} (--no-compile or over the budget)")
            continue
        r = time_training(args, size, compiled)
        per_epoch = scaled_epoch(common.median(r["seconds"]), size["images"])
        label = f"compiled ({args.compile_mode})" if compiled else "eager"
        guess = row[1].get("compiled" if compiled else "eager") if row else None
        print(f"training {label}, {r['precision']} ({r['reason']}), channels_last, no sync in the step loop: "
              f"{ratio_text(per_epoch, guess)}")
        results[label] = dict(s_per_epoch=per_epoch, seconds=r["seconds"], loss=r["loss"])
        model, stats, precision = r["model"], r["stats"], r["precision"]
    if time.perf_counter() - began < args.budget and "model" in locals():
        e = time_extraction(model, stats, size, precision)
        rate = e["images"] / common.median(e["seconds"])
        print(f"features.extract: {rate:,.0f} images/s ({size['test']:,} images, body in {precision})")
        results["extract_images_per_s"] = rate
    if time.perf_counter() - began < args.budget:
        results["scores"] = time_scores(size)
        for score, value in results["scores"].items():
            print(f"score {score}: " + (f"{value:.3f} s fit+score" if isinstance(value, float) else value))
    print(f"total {time.perf_counter() - began:.0f} s (budget {args.budget:.0f} s)")
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
