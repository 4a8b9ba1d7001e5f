"""The device and the numerical precision a run uses, chosen once and printed with the reason.

Mixed precision follows the hardware: bf16 autocast on CUDA devices of compute capability ≥ 8.0 (Ampere and
newer), fp16 autocast with a gradient scaler below it (a T4, as free Colab gives, runs bf16 convolutions on slow
paths), float32 on the CPU. Features for metrics are always pooled and classified in float32
(:func:`helpers.features.extract`).
"""

from __future__ import annotations

import contextlib
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


def device_name(device: torch.device) -> str:
    """Human name of the chosen device (the chosen GPU's own name, not GPU 0's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device.index if device.index is not None else torch.cuda.current_device())
    return f"CPU ({torch.get_num_threads()} threads)"


def choose_precision(asked: str, device_type: str, capability: tuple[int, int] | None) -> tuple[str, str]:
    """(precision, reason) for ``asked`` in auto|bf16|fp16|fp32 on a device of ``capability`` (CUDA only)."""
    if asked != "auto":
        if asked == "fp16" and device_type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use -p precision fp32 (or bf16) on the CPU.")
        return asked, "asked for explicitly"
    if device_type != "cuda":
        return "fp32", "CPU: float32"
    if capability is not None and capability >= (8, 0):
        return "bf16", f"compute capability {capability[0]}.{capability[1]} >= 8.0 has fast bf16"
    cap = f"{capability[0]}.{capability[1]}" if capability else "unknown"
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


def configure_backends(cfg: Config, device: torch.device) -> str:
    """cuDNN autotuning on for CUDA training (fixed shapes), or deterministic algorithms when asked for."""
    if device.type != "cuda":
        return ""
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    return "deterministic algorithms (slower)" if cfg.deterministic else "cuDNN autotuning"
