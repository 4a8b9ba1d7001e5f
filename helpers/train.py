"""Training: SGD with Nesterov momentum, weight decay and a cosine schedule, resumable from checkpoints.

The fast path keeps the whole training set, the validation and test images and the normalisation statistics
on the device for the whole fit (moved once), draws a batch by indexing, augments and normalises it there, runs
the model in channels_last under the device's mixed precision on CUDA (:mod:`helpers.device`), and accumulates
loss and accuracy on the device: the step loop never waits for the host (one transfer of each epoch's random
draws, one read of the epoch's loss and accuracy). On CUDA, ``-p compile true`` compiles the whole forward
step (crop, flip, normalisation, memory-format conversion, network, loss) with ``-p compile_mode``. On the CPU
the same code runs without autocast. Runs are deterministic on the CPU: the model is initialised from
``cfg.seed`` and every random draw of the data pipeline comes from one seeded generator whose state each
checkpoint stores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import artifacts
from . import checkpoint as ckpt
from .config import Config, resolve_device
from .data import ImageSet, Splits, crop_flip, crop_flip_params, id_splits, normalize
from .device import Precision, configure_backends, eval_batch, training_line
from .features import extract
from .model import ResNet18, build_model
from .progress import progress_bar as tqdm

Step = Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]]   # (x uint8, y, crop/flip) -> (loss, logits)


def checkpoint_dir(cfg: Config) -> Path:
    return cfg.run_dir() / "checkpoints"


def make_model(cfg: Config, num_classes: int, device: torch.device) -> ResNet18:
    """The initial model of ``cfg``: seeded without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(num_classes, cfg.width, device)


def make_optimiser(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """SGD and its cosine schedule; on CUDA the fused kernel, which also lets the fp16 gradient scaler skip a
    step on overflow without reading the overflow flag on the host (no synchronisation per step)."""
    fused = True if next(model.parameters()).is_cuda else None          # None: the CPU's default, as before
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay, fused=fused)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)


def evaluate(model: ResNet18, ds: ImageSet, stats: tuple[Tensor, Tensor], device: torch.device,
             batch_size: int, precision: str = "fp32") -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``ds`` (no augmentation); ``stats`` = (mean, std)."""
    if len(ds) == 0:
        return float("nan"), float("nan")
    out = extract(model, ds, *stats, device, batch_size, precision=precision)
    loss = F.cross_entropy(out.logits, out.labels).item()
    return loss, (out.logits.argmax(1) == out.labels).float().mean().item()


class TrainingDivergedError(RuntimeError):
    """The loss became non-finite or exploded; no checkpoint of the diverged state was written."""


def augments_at(cfg: Config, epoch: int) -> bool:
    """Whether ``epoch`` (1-based) trains on augmented images: all epochs but the last ``plain_epochs``."""
    return cfg.augment and epoch <= cfg.epochs - cfg.plain_epochs


def check_divergence(epoch: int, loss: float, first_loss: float | None, lr: float, num_classes: int) -> None:
    """Stop when the epoch's mean loss is not finite or exceeds 10× max(first epoch's loss, log K)."""
    ceiling = 10 * max(first_loss if first_loss is not None else 0.0, math.log(num_classes))
    if not math.isfinite(loss) or loss > ceiling:
        raise TrainingDivergedError(
            f"training diverged at epoch {epoch}: mean loss {loss:.3g} (limit {ceiling:.3g}) at lr {lr:g}; "
            "no checkpoint of this state was written, earlier ones are intact; lower -p lr (e.g. by 10x).")


def batch_loss(model: nn.Module, x: Tensor, y: Tensor, params: Tensor | None, stats: tuple[Tensor, Tensor],
               amp: Precision, channels_last: bool) -> tuple[Tensor, Tensor]:
    """Crop and flip (when ``params``), normalise and classify a uint8 batch (B, 3, H, W); (loss, logits (B, K))."""
    if params is not None:
        x = crop_flip(x, params)
    x = normalize(x, *stats)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with amp.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    return loss, logits


def make_step(model: nn.Module, stats: tuple[Tensor, Tensor], amp: Precision, channels_last: bool = False,
              compile_mode: str | None = None, backend: str = "inductor", fullgraph: bool = False) -> Step:
    """The forward part of a training step, :func:`batch_loss`, as a function of (x, y, params).

    With ``compile_mode`` the whole of it is one ``torch.compile`` region, so the uint8-to-float conversion,
    crop, flip, normalisation and memory-format conversion fuse into a few kernels ahead of the first
    convolution, and the backward of the compiled region is compiled too. ``stats`` are on the device.
    """
    def step(x: Tensor, y: Tensor, params: Tensor | None) -> tuple[Tensor, Tensor]:
        return batch_loss(model, x, y, params, stats, amp, channels_last)

    if compile_mode is None:
        return step
    return torch.compile(step, mode=compile_mode, backend=backend, fullgraph=fullgraph)


def train_epoch(model: nn.Module, images: Tensor, labels: Tensor, stats: tuple[Tensor, Tensor],
                opt: torch.optim.Optimizer, generator: torch.Generator, cfg: Config, device: torch.device,
                augment: bool, amp: Precision | None = None, step: Step | None = None) -> tuple[float, float]:
    """One pass over the device-resident training set; returns (mean loss, accuracy) on the batches seen.

    ``stats`` = (mean, std) already on ``device``; ``step`` defaults to the eager :func:`make_step`. The
    epoch's random draws reach the device in one transfer, so nothing inside the step loop waits for the host.
    """
    amp = amp or Precision.for_device(device, "fp32")
    step = step or make_step(model, stats, amp, channels_last=device.type == "cuda")
    model.train()
    order, params = epoch_draws(images.shape[0], generator, device, augment)
    loss_sum, correct, seen = run_steps(step, images, labels, order, params, opt, amp, cfg.batch_size)
    return (loss_sum / seen).item(), (correct.float() / seen).item()


def epoch_draws(n: int, generator: torch.Generator, device: torch.device,
                augment: bool) -> tuple[Tensor, Tensor | None]:
    """The epoch's order (n,) and, when augmenting, crop/flip draws (n, 3), drawn on the CPU from ``generator``
    (identical runs on any device) and moved to ``device`` once."""
    order = torch.randperm(n, generator=generator).to(device)
    return order, _draws_to(crop_flip_params(n, generator), device) if augment else None


def run_steps(step: Step, images: Tensor, labels: Tensor, order: Tensor, params: Tensor | None,
              opt: torch.optim.Optimizer, amp: Precision, batch_size: int) -> tuple[Tensor, Tensor, int]:
    """The step loop: every full batch of ``order`` (the last partial one is dropped, for BatchNorm).

    Returns (sum of batch losses × batch size, correct predictions, images seen), the first two as tensors on
    the device: nothing here reads a device value, so a GPU never waits for the host.
    """
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    seen, B = 0, batch_size
    for start in range(0, order.shape[0] - B + 1, B):
        idx = order[start:start + B]
        y = labels[idx]
        loss, logits = step(images[idx], y, params[start:start + B] if params is not None else None)
        opt.zero_grad(set_to_none=True)
        amp.backward_step(loss, opt)
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    return loss_sum, correct, seen


def _draws_to(draws: Tensor, device: torch.device) -> Tensor:
    """An epoch's random draws on ``device``: pinned and copied asynchronously on CUDA."""
    return draws.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else draws.to(device)


def _resume(cfg: Config, model: nn.Module, opt, sched, generator: torch.Generator, num_classes: int,
            amp: Precision):
    """Restore the latest complete checkpoint; returns (epoch, history)."""
    found = ckpt.list_checkpoints(checkpoint_dir(cfg))
    if not found:
        return 0, []
    epoch, path = max(found.items())
    blob = ckpt.load(path)
    ckpt.check_matches(blob, path, num_classes, cfg.width)
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    generator.set_state(blob["generator"])
    if amp.scaler is not None and blob.get("scaler"):
        amp.scaler.load_state_dict(blob["scaler"])
    return epoch, list(blob["history"])


@dataclass
class OnDevice:
    """What one fit keeps on the device for all its epochs, each moved once: the training images (N, 3, H, W)
    uint8 and labels (N,), the normalisation statistics (mean, std), each (3,), and the val and test sets."""

    images: Tensor
    labels: Tensor
    stats: tuple[Tensor, Tensor]
    val: ImageSet
    test: ImageSet

    @classmethod
    def of(cls, splits: Splits, device: torch.device) -> OnDevice:
        images, labels = _to_device(splits.train, device)
        stats = (splits.mean.to(device), splits.std.to(device))
        return cls(images, labels, stats, resident(splits.val, device), resident(splits.test, device))


def resident(ds: ImageSet, device: torch.device) -> ImageSet:
    """``ds`` with its images on ``device`` (labels stay on the CPU, where the evaluation reads them)."""
    return ImageSet(ds.name, _images_to(ds.images, device), ds.labels, ds.classes, ds.source)


@dataclass
class _Fit:
    """The state of one fit between epochs."""

    cfg: Config
    model: ResNet18
    opt: torch.optim.Optimizer
    sched: Any
    amp: Precision
    generator: torch.Generator
    device: torch.device
    data: OnDevice
    step: Step
    num_classes: int


def _epoch(run: _Fit, epoch: int, history: list[dict[str, float]]) -> dict[str, float]:
    """Train one epoch, step the schedule, evaluate on val and test; the epoch's row of the history."""
    cfg, data, device = run.cfg, run.data, run.device
    lr = run.opt.param_groups[0]["lr"]
    train_loss, train_acc = train_epoch(run.model, data.images, data.labels, data.stats, run.opt, run.generator,
                                        cfg, device, augments_at(cfg, epoch), run.amp, run.step)
    check_divergence(epoch, train_loss, history[0]["train_loss"] if history else None, lr, run.num_classes)
    run.sched.step()
    precision = run.amp.name if device.type == "cuda" else "fp32"       # the CPU evaluates in float32, as always
    batch = eval_batch(cfg, device)
    val_loss, val_acc = evaluate(run.model, data.val, data.stats, device, batch, precision)
    test_loss, test_acc = evaluate(run.model, data.test, data.stats, device, batch, precision)
    return dict(epoch=epoch, lr=lr, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                val_acc=val_acc, test_loss=test_loss, test_acc=test_acc)


def _save(run: _Fit, splits: Splits, epoch: int, history: list[dict[str, float]]) -> None:
    ckpt.save_atomic(dict(epoch=epoch, config=run.cfg.to_dict(), num_classes=run.num_classes, history=history,
                          mean=splits.mean, std=splits.std, model=run.model.state_dict(),
                          optimizer=run.opt.state_dict(), scheduler=run.sched.state_dict(),
                          scaler=run.amp.scaler.state_dict() if run.amp.scaler else None,
                          generator=run.generator.get_state()),
                     checkpoint_dir(run.cfg) / f"epoch-{epoch:04d}.pt")


def _compiled_step(cfg: Config, model: ResNet18, stats: tuple[Tensor, Tensor], amp: Precision,
                   device: torch.device) -> Step:
    """The step of ``cfg``: on CUDA compiled whole when ``cfg.compile``; on the CPU the (optionally compiled)
    model inside the eager step, as before."""
    cuda = device.type == "cuda"
    if cfg.compile and cuda:
        return make_step(model, stats, amp, True, cfg.compile_mode)
    net = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
    return make_step(net, stats, amp, cuda)


def fit(cfg: Config, splits: Splits | None = None, device: torch.device | None = None,
        progress: bool = True) -> tuple[ResNet18, list[dict[str, float]]]:
    """Train ``cfg`` to its last epoch, resuming from the latest complete checkpoint; returns (model, history).

    Checkpoints are saved at :func:`helpers.checkpoint.checkpoint_epochs` and hold the config, the history,
    the model, the optimiser, the schedule, the gradient scaler and the data generator's state. A diverging
    loss stops training before any checkpoint of the diverged state is written. The run folder is locked
    (:func:`helpers.artifacts.run_lock`) so that a second run on it stops with a message.
    """
    device = device or resolve_device(cfg)
    splits = splits or id_splits(cfg)
    if len(splits.train) < cfg.batch_size:
        raise ValueError(f"the training set has {len(splits.train)} images, fewer than batch_size {cfg.batch_size}, "
                         "so an epoch would have no step; lower -p batch_size or use more data.")
    ckpt.remove_stale_tmp(ckpt.ensure_writable(checkpoint_dir(cfg)))
    with artifacts.run_lock(artifacts.RunPaths.of(cfg)):
        return _fit_locked(cfg, splits, device, progress)


def _fit_locked(cfg: Config, splits: Splits, device: torch.device,
                progress: bool) -> tuple[ResNet18, list[dict[str, float]]]:
    K = splits.num_classes
    model = make_model(cfg, K, device)
    opt, sched = make_optimiser(cfg, model)
    amp = Precision.for_device(device, cfg.precision)
    generator = torch.Generator().manual_seed(cfg.seed)
    start, history = _resume(cfg, model, opt, sched, generator, K, amp)
    if start >= cfg.epochs:
        return model, history
    backend = configure_backends(cfg, device)
    if progress:
        print(training_line(device, amp, backend), flush=True)
    data = OnDevice.of(splits, device)
    step = _compiled_step(cfg, model, data.stats, amp, device)
    run = _Fit(cfg, model, opt, sched, amp, generator, device, data, step, K)
    save_at = set(ckpt.checkpoint_epochs(cfg.epochs, cfg.checkpoint_every))
    bar = tqdm(range(start + 1, cfg.epochs + 1), desc="training", disable=not progress, initial=start,
               total=cfg.epochs)
    for epoch in bar:
        history.append(_epoch(run, epoch, history))
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", train_acc=f"{history[-1]['train_acc']:.3f}",
                        test_acc=f"{history[-1]['test_acc']:.3f}")
        if epoch in save_at:
            _save(run, splits, epoch, history)
    return model, history


def _to_device(ds: ImageSet, device: torch.device) -> tuple[Tensor, Tensor]:
    """The whole set's uint8 images and labels on ``device``."""
    return _images_to(ds.images, device), ds.labels.to(device)


def _images_to(images: Tensor, device: torch.device) -> Tensor:
    """uint8 images on ``device``, pinned for one asynchronous copy on CUDA (a no-op when already there)."""
    if device.type == "cuda" and images.device.type == "cpu":
        images = images.pin_memory()
    return images.to(device, non_blocking=True)


def load_model(path: Path, cfg: Config, num_classes: int, device: torch.device) -> ResNet18:
    """A model with the weights of checkpoint ``path``, checked against ``cfg``'s width and class count."""
    blob = ckpt.load(path)
    ckpt.check_matches(blob, path, num_classes, cfg.width)
    model = build_model(num_classes, cfg.width, device)
    model.load_state_dict(blob["model"])
    return model.eval()


def load_or_train(cfg: Config, splits: Splits | None = None, device: torch.device | None = None,
                  progress: bool = True) -> tuple[ResNet18, list[dict[str, float]], dict[int, Path]]:
    """Reuse the checkpoints of ``cfg`` when training already reached the last epoch, else train (resuming).

    Returns (model at the last epoch, history, {epoch: checkpoint path}).
    """
    device = device or resolve_device(cfg)
    splits = splits or id_splits(cfg)
    found = ckpt.list_checkpoints(checkpoint_dir(cfg)) if checkpoint_dir(cfg).exists() else {}
    if cfg.epochs in found:
        path = found[cfg.epochs]
        model = load_model(path, cfg, splits.num_classes, device)
        return model, list(ckpt.load(path)["history"]), found
    model, history = fit(cfg, splits, device, progress)
    return model.eval(), history, ckpt.list_checkpoints(checkpoint_dir(cfg))
