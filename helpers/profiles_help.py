"""The profiles in one line each, and how long their training takes: ``python -m helpers.run --help``.

Training time is ``epochs * (N_train + N_eval / 3) / r``: each epoch trains on ``N_train`` images and evaluates
the validation and test sets (forward only, about a third of a training step's cost), at a throughput ``r`` in
images per second. CPU throughputs were measured with ``train_epoch`` on 2 cores (benchmarks/README.md,
bench_train; width 64 measured on the CIFAR-100 run): they scale with the threads and, between the measured
widths, log-linearly. GPU throughputs are estimates, not measurements: the forward and backward pass of the full
ResNet-18 counts 3.33 GFLOP per image, and a step reaches about 15 % of the GPU's dense bf16/fp16 peak
(benchmarks/README.md, "GPU"); a narrower network is faster in proportion to its width (its activations,
the memory-bound part), but a step cannot take less than the host's time to launch its kernels (about 2 ms
eager, the same section), so at most ``batch / 2 ms`` images per second.
"""

from __future__ import annotations

import math

from .config import PROFILES, Config, make_config

CPU_IMAGES_PER_S = {8: 722.0, 16: 340.0, 64: 24.0}     # width -> images/s of train_epoch on 2 CPU cores
GPU_PEAK_TFLOPS = {"H100": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}   # dense bf16 (T4: fp16)
GPU_FALLBACK = "T4"                                    # an unknown GPU is assumed as slow as a T4
FLOP_PER_IMAGE = 3.33e9                                # forward + backward, width 64, 32x32 image
GPU_EFFICIENCY = 0.15
STEP_LAUNCH_S = 2e-3                                   # host time to launch an eager step's ~300 kernels
TRAIN_SIZES = {"cifar100": 50_000, "cifar10": 50_000}  # training images of the real ID sets
TEST_SIZES = {"cifar100": 10_000, "cifar10": 10_000}


def cpu_images_per_s(width: int, threads: int = 2) -> float:
    """Training throughput on ``threads`` CPU threads, log-log interpolated between the measured widths."""
    widths = sorted(CPU_IMAGES_PER_S)
    lo, hi = (widths[0], widths[1]) if width <= widths[1] else (widths[1], widths[2])
    slope = math.log(CPU_IMAGES_PER_S[hi] / CPU_IMAGES_PER_S[lo]) / math.log(hi / lo)
    return CPU_IMAGES_PER_S[lo] * (width / lo) ** slope * max(threads, 1) / 2


def gpu_images_per_s(width: int, gpu_name: str, batch_size: int = 128) -> float:
    """Estimated training throughput of a GPU named ``gpu_name`` (e.g. "Tesla T4", "NVIDIA H100 80GB HBM3").

    min(peak * efficiency / FLOP per image * 64 / width, batch_size / STEP_LAUNCH_S): at full width the
    rate of the README's estimate; a narrower network moves ``width / 64`` of the activations (the memory-bound
    part, which sets the pace once the FLOPs shrink by (width / 64)^2), down to the host's launch floor.
    """
    model = next((m for m in GPU_PEAK_TFLOPS if m in gpu_name.upper()), GPU_FALLBACK)
    compute = GPU_PEAK_TFLOPS[model] * 1e12 * GPU_EFFICIENCY / FLOP_PER_IMAGE * 64 / width
    return min(compute, batch_size / STEP_LAUNCH_S)


def epoch_images(cfg: Config) -> tuple[int, int] | None:
    """(N_train, N_eval) of one epoch of ``cfg``; None for an image folder, whose size is not known here."""
    if cfg.id_dataset == "synthetic":
        total = cfg.num_classes * cfg.per_class
        return round(total * (1 - cfg.val_fraction)), round(total * cfg.val_fraction)
    if cfg.id_dataset not in TRAIN_SIZES:
        return None
    total = cfg.train_subset or TRAIN_SIZES[cfg.id_dataset]
    val = round(total * cfg.val_fraction)
    return total - val, val + TEST_SIZES[cfg.id_dataset]


def training_seconds(cfg: Config, images_per_s: float, epochs: int | None = None) -> float | None:
    """``epochs * (N_train + N_eval / 3) / images_per_s`` (all of ``cfg.epochs`` by default); None if unknown."""
    sizes = epoch_images(cfg)
    if sizes is None:
        return None
    n_train, n_eval = sizes
    return (cfg.epochs if epochs is None else epochs) * (n_train + n_eval / 3) / images_per_s


def format_duration(seconds: float | None) -> str:
    """``75`` -> "1 min", ``5400`` -> "1.5 h"; None -> "an unknown time" (image folders)."""
    if seconds is None:
        return "an unknown time"
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def profile_line(name: str) -> str:
    """One line for profile ``name``: data, network, and training time on 2 CPU cores, a T4 and an H100."""
    cfg = make_config(name)
    data = f"{cfg.id_dataset} vs {', '.join(cfg.ood_datasets)}"
    net = f"ResNet-18 width {cfg.width}, {cfg.epochs} epochs" + (", augmented" if cfg.augment else "")
    times = [format_duration(training_seconds(cfg, cpu_images_per_s(cfg.width)))]
    times += [format_duration(training_seconds(cfg, gpu_images_per_s(cfg.width, gpu, cfg.batch_size)))
              for gpu in ("T4", "H100")]
    return f"  {name:<6} {data}; {net}; training {times[0]} on 2 CPU cores, ~{times[1]} on a T4, ~{times[2]} on an H100"


def profile_help() -> str:
    """Epilog of ``python -m helpers.run --help``: the profiles, one line each, and how ``-p`` works."""
    lines = ["profiles (data; network; training time, GPU times estimated):"]
    lines += [profile_line(name) for name in PROFILES if name != "auto"]
    lines += ["  auto   full when CUDA is available, else smoke (the notebooks' default)",
              "",
              "-p NAME VALUE overrides any field of helpers.config.Config in every notebook (papermill's spelling;",
              "VALUE is read as YAML: -p epochs 3 is an int, -p augment true a bool, -p ood_datasets svhn,dtd a list):",
              "  python -m helpers.run --profile cpu -p epochs 20 -p seed 1"]
    return "\n".join(lines)
