"""Named profiles and the run configuration.

Every field of :class:`Config` can be overridden from a notebook's papermill ``parameters`` cell
(``papermill ... -p epochs 3``) or from the runner (``python -m helpers.run --profile smoke -p epochs 3``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "cpu", "full", "auto")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Config:
    """One experiment: data, model, optimisation, checkpoints and where artifacts go."""

    profile: str = "smoke"
    seed: int = 0
    # data
    id_dataset: str = "synthetic"            # synthetic | cifar100 | cifar10 | imagefolder:PATH
    ood_datasets: tuple[str, ...] = ("synthetic-digits", "synthetic-near", "synthetic-textures")
    val_ood_dataset: str = "synthetic-near-val"  # held-out OOD set for choosing hyper-parameters
    num_classes: int = 32                    # synthetic only: number of ID classes (K - 1 <= D = 8 * width)
    per_class: int = 40                      # synthetic only: training images per class
    train_subset: int = 0                    # 0 = whole training set, else a class-balanced subset
    val_fraction: float = 0.1                # seeded validation split of the training set
    ood_subset: int = 0                      # 0 = whole OOD test sets, else at most this many images
    data_root: str = ""                      # "" = $OODNC_DATA or ~/.cache/oodnc
    # model
    width: int = 8                           # channels of the first stage (64 = ResNet-18)
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    augment: bool = False                    # random crop (4-pixel padding) + horizontal flip
    plain_epochs: int = 0                    # with augment: the last N epochs train on unaugmented images
    checkpoint_every: int = 4                # regular checkpoints after a log-spaced early phase
    # execution
    device: str = "auto"                     # auto | cpu | cuda | cuda:N
    compile: bool = False                    # torch.compile the model (GPU)
    compile_mode: str = "default"            # default | reduce-overhead | max-autotune
    precision: str = "auto"                  # auto (CUDA: bf16 from capability 8.0, else fp16; CPU: fp32) | ...
    deterministic: bool = False              # CUDA: deterministic algorithms, no cuDNN autotuning (slower)
    skip_bad_images: bool = False            # image folders: skip unreadable images with a warning, not stop
    eval_batch_size: int = 0                 # 0 = auto: 128 images on a CPU, 512 on a GPU (device.eval_batch)
    artifacts: str = ""                      # "" = $OODNC_ARTIFACTS or <repo>/artifacts
    extra_ood: tuple[str, ...] = field(default=())  # more OOD sets, e.g. ("imagefolder:/data/x",)

    # ------------------------------------------------------------------ derived paths
    def key(self) -> str:
        """Short hash of every field that changes the trained weights."""
        fields = ("id_dataset", "train_subset", "val_fraction", "width", "epochs", "batch_size", "lr", "momentum",
                  "nesterov", "weight_decay", "augment", "seed")
        if self.id_dataset == "synthetic":                   # the synthetic set's size only matters for itself
            fields += ("num_classes", "per_class")
        fields += tuple(k for k in ("plain_epochs", "precision", "deterministic")     # only when not the default,
                        if getattr(self, k) != getattr(Config, k)                      # so older keys stay valid,
                        and (k != "plain_epochs" or self.augment))                    # (plain epochs need augmentation)
        blob = json.dumps({k: getattr(self, k) for k in fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_dir(self) -> Path:
        """Artifacts of this configuration, ``<artifacts>/<profile>-<id>-s<seed>-<key>`` (:mod:`helpers.artifacts`)."""
        from .artifacts import RunPaths

        return RunPaths.of(self).root

    def data_dir(self) -> Path:
        return Path(self.data_root or os.environ.get("OODNC_DATA") or Path.home() / ".cache" / "oodnc")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SMOKE = dict(profile="smoke", batch_size=64)       # 18 steps an epoch on the 1152 training images
# CIFAR-100 against OpenOOD v1.5's near (CIFAR-10, Tiny ImageNet) and the far sets available offline.
_CPU = dict(profile="cpu", id_dataset="cifar100", width=16, epochs=30, train_subset=0, batch_size=128, lr=0.05,
            augment=True, plain_epochs=20, checkpoint_every=5,
            ood_datasets=("cifar10", "tinyimagenet", "dtd10", "fashion-mnist", "synthetic-digits"),
            val_ood_dataset="tinyimagenet-holdout", ood_subset=0)
_FULL = dict(profile="full", id_dataset="cifar100", width=64, epochs=200, batch_size=128, lr=0.1, augment=True,
             checkpoint_every=10, ood_datasets=("svhn", "cifar10", "dtd"), val_ood_dataset="synthetic-near-val")
_PROFILES = {"smoke": _SMOKE, "cpu": _CPU, "full": _FULL}


def choose_profile(profile: str) -> tuple[str, str]:
    """Resolve ``auto`` to ``full`` on CUDA and ``smoke`` otherwise; returns (profile, reason)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.")
    if profile != "auto":
        return profile, "asked for explicitly"
    if torch.cuda.is_available():
        return "full", f"auto: CUDA device {torch.cuda.get_device_name(0)} found"
    return "smoke", "auto: no CUDA device, so the small offline profile"


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Check an override against the field's type; tuples accept lists and comma-separated strings."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(default, str) and isinstance(value, str):
        return value
    want = type(default).__name__
    example = (",".join(default) or "name1,name2") if isinstance(default, tuple) else repr(default)
    raise ValueError(f"parameter {name!r} must be {want}, got {type(value).__name__} {value!r}; "
                     f"e.g. -p {name} {example}.")


def make_config(profile: str = "auto", **overrides: Any) -> Config:
    """Config of a named profile with overrides; unknown names and wrong types raise ``ValueError``."""
    name, _ = choose_profile(profile)
    base = Config(**_PROFILES[name])
    defaults = base.to_dict()
    values = dict(defaults)
    for key, value in overrides.items():
        if key not in defaults or key == "profile":
            names = sorted(k for k in defaults if k != "profile")
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown parameter {key!r};{hint} valid names: {', '.join(names)}.")
        values[key] = _coerce(key, value, defaults[key])
    cfg = Config(**values)
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    positive = ("epochs", "batch_size", "width", "checkpoint_every", "num_classes", "per_class")
    for k in positive:
        if getattr(cfg, k) <= 0:
            raise ValueError(f"parameter {k!r} must be positive, got {getattr(cfg, k)}.")
    if cfg.eval_batch_size < 0:
        raise ValueError(f"parameter 'eval_batch_size' must be 0 (auto) or positive, got {cfg.eval_batch_size}.")
    if not 0.0 <= cfg.val_fraction < 0.5:
        raise ValueError(f"val_fraction must lie in [0, 0.5), got {cfg.val_fraction}.")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}.")
    if not 0 <= cfg.plain_epochs <= cfg.epochs:
        raise ValueError(f"plain_epochs must lie in [0, epochs={cfg.epochs}], got {cfg.plain_epochs}.")
    choices = {"precision": PRECISIONS, "compile_mode": COMPILE_MODES}
    for k, allowed in choices.items():
        if getattr(cfg, k) not in allowed:
            raise ValueError(f"parameter {k!r} must be one of {', '.join(allowed)}, got {getattr(cfg, k)!r}.")


def from_notebook(namespace: dict[str, Any]) -> Config:
    """Build the config from a notebook's globals: ``profile`` plus any papermill-injected field.

    Every plain value (number, string, bool, list, tuple) defined before this call other than ``profile``
    must be a config field, so a typo such as ``-p epoch 3`` fails loudly instead of being ignored.
    """
    plain = (bool, int, float, str, list, tuple)
    skip = {"In", "Out", "exit", "quit", "get_ipython", "open"}
    found = {k: v for k, v in namespace.items()
             if not k.startswith("_") and k not in skip and isinstance(v, plain) and k != "profile"}
    return make_config(namespace.get("profile", "auto"), **{k: v for k, v in found.items() if v is not None})


def resolve_device(cfg: Config) -> torch.device:
    """See :func:`helpers.device.resolve_device` (kept here for older imports)."""
    from .device import resolve_device as resolve

    return resolve(cfg)
