"""The device and the numerical precision a run uses, chosen once and printed with the reason.

Mixed precision follows the hardware: bf16 autocast on CUDA devices of compute capability ≥ 8.0 (Ampere and
newer), fp16 autocast with a gradient scaler below it (a T4, as free Colab gives, runs bf16 convolutions on slow
paths), float32 on the CPU; ``-p precision`` overrides the choice. Features for metrics are always pooled and
classified in float32 (:func:`helpers.features.extract`).

CUDA training turns cuDNN autotuning on (training shapes are fixed, so the fastest convolution algorithms are
measured once and reused); ``-p deterministic true`` turns it off and asks for deterministic algorithms
instead, for bit-identical GPU runs at a cost in speed (often 10-30 %, more for some layers).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .config import Config

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(cfg: Config) -> torch.device:
    """``cfg.device`` as a torch device; a missing CUDA or a CUDA index beyond the devices present is refused."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise ValueError(f"device {cfg.device!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {cfg.device!r} asked for but CUDA is not available; use -p device cpu.")
        if device.index is not None and device.index >= count:
            there = ", ".join(f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(count))
            raise ValueError(f"device {cfg.device!r} does not exist; the devices here are {there}.")
    return device


EVAL_BATCH = {"cpu": 128, "cuda": 512}     # images per inference batch when cfg.eval_batch_size is 0 (auto)


def eval_batch(cfg: Config, device: torch.device) -> int:
    """Images per inference batch: ``cfg.eval_batch_size``, or for 0 (auto) :data:`EVAL_BATCH` of the device.

    On this project's 2-core CPU a batch of 512 runs 1.7-2x slower than 128 (the activations leave the
    cache; ``benchmarks/bench_eval_batch.py``), and eval-mode outputs do not depend on the batch size there
    (bit-identical logits, checked by the same script).
    """
    return cfg.eval_batch_size or EVAL_BATCH.get(device.type, EVAL_BATCH["cuda"])


def device_name(device: torch.device) -> str:
    """Human name of the chosen device (the chosen GPU's own name, not GPU 0's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device.index if device.index is not None else torch.cuda.current_device())
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


def choose_precision(asked: str, device_type: str, capability: tuple[int, int] | None) -> tuple[str, str]:
    """(precision, reason) for ``asked`` in auto|bf16|fp16|fp32 on a device of ``capability`` (CUDA only).

    auto: bf16 at compute capability ≥ 8.0, fp16 (with a gradient scaler) below it, fp32 off CUDA.
    """
    if asked not in DTYPES and asked != "auto":
        raise ValueError(f"precision {asked!r} is not one of auto, bf16, fp16, fp32; e.g. -p precision auto.")
    cap = f"{capability[0]}.{capability[1]}" if capability else "unknown"
    if asked != "auto":
        if asked == "fp16" and device_type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use -p precision fp32 (or bf16) on the CPU.")
        slow = asked == "bf16" and device_type == "cuda" and not (capability and capability >= (8, 0))
        return asked, "asked for explicitly" + (f"; slow at compute capability {cap} < 8.0" if slow else "")
    if device_type != "cuda":
        return "fp32", "CPU: float32"
    if capability is not None and capability >= (8, 0):
        return "bf16", f"compute capability {cap} >= 8.0 has fast bf16"
    return "fp16", f"compute capability {cap} < 8.0: bf16 would be slow, fp16 with a gradient scaler"


@dataclass
class Precision:
    """Autocast and (for fp16) the gradient scaler of a training run."""

    name: str
    device_type: str
    reason: str = ""
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def for_device(cls, device: torch.device, asked: str = "auto") -> Precision:
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        name, reason = choose_precision(asked, device.type, capability)
        scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        return cls(name, device.type, reason, scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = DTYPES[self.name]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """``loss.backward(); opt.step()``, through the gradient scaler when there is one."""
        if self.scaler is None:
            loss.backward()
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()


def training_line(device: torch.device, amp: Precision, backend: str = "") -> str:
    """The one line printed at the start of training: the chosen device's name, the precision and why."""
    where = f"{device_name(device)} ({device})" if device.type == "cuda" else device_name(device)
    return f"training on {where} in {amp.name} ({amp.reason})" + (f", {backend}" if backend else "")


def configure_backends(cfg: Config, device: torch.device) -> str:
    """cuDNN autotuning on for CUDA training (fixed shapes), or deterministic algorithms when asked for.

    ``cfg.deterministic`` turns autotuning off, makes cuDNN and every other op deterministic and sets the cuBLAS
    workspace that deterministic matrix products need: bit-identical GPU runs, slower (the fastest kernels
    are often the non-deterministic ones). The CPU is deterministic already and is left alone. Returns what
    was set, for the line printed at the start of training.
    """
    if device.type != "cuda":
        return ""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # read when cuBLAS starts
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    return "deterministic algorithms (slower)" if cfg.deterministic else "cuDNN autotuning"
