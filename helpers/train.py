"""Training: SGD with Nesterov momentum, weight decay and a cosine schedule, resumable from checkpoints.

The fast path keeps the whole training set on the device as uint8, draws a batch by indexing, augments
and normalises it there, runs the model in channels_last with bf16 autocast on CUDA, and accumulates loss
and accuracy on the device (no host synchronisation inside the step loop). On the CPU the same code runs
without autocast. Runs are deterministic on the CPU: the model is initialised from ``cfg.seed`` and every
random draw of the data pipeline comes from one seeded generator whose state each checkpoint stores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import Config, resolve_device
from .data import ImageSet, Splits, crop_flip, crop_flip_params, id_splits, normalize
from .device import Precision, configure_backends, device_name
from .features import extract
from .model import ResNet18, build_model


def checkpoint_dir(cfg: Config) -> Path:
    return cfg.run_dir() / "checkpoints"


def make_model(cfg: Config, num_classes: int, device: torch.device) -> ResNet18:
    """The initial model of ``cfg``: seeded without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(num_classes, cfg.width, device)


def make_optimiser(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)


def evaluate(model: ResNet18, ds: ImageSet, splits: Splits, device: torch.device,
             batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``ds`` (no augmentation)."""
    if len(ds) == 0:
        return float("nan"), float("nan")
    out = extract(model, ds, splits.mean, splits.std, device, batch_size)
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


def train_epoch(model: nn.Module, images: Tensor, labels: Tensor, stats: tuple[Tensor, Tensor],
                opt: torch.optim.Optimizer, generator: torch.Generator, cfg: Config, device: torch.device,
                augment: bool, amp: Precision | None = None) -> tuple[float, float]:
    """One pass over the device-resident training set; returns (mean loss, accuracy) on the batches seen.

    ``stats`` = (mean, std) already on ``device``; the epoch's random draws reach the device in one transfer,
    so nothing inside the step loop waits for the host.
    """
    amp = amp or Precision.for_device(device, "fp32")
    model.train()
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(device)
    if augment:                                                       # one epoch of random draws, one transfer
        params = crop_flip_params(n, generator).to(device, non_blocking=True)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):    # drop the last partial batch (BatchNorm)
        idx = order[start:start + cfg.batch_size]
        x, y = images[idx], labels[idx]
        if augment:
            x = crop_flip(x, params[start:start + cfg.batch_size])
        x = normalize(x, *stats)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with amp.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        amp.backward_step(loss, opt)
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    return (loss_sum / seen).item(), (correct.float() / seen).item()


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


def fit(cfg: Config, splits: Splits | None = None, device: torch.device | None = None,
        progress: bool = True) -> tuple[ResNet18, list[dict[str, float]]]:
    """Train ``cfg`` to its last epoch, resuming from the latest complete checkpoint; returns (model, history).

    Checkpoints are saved at :func:`helpers.checkpoint.checkpoint_epochs` and hold the config, the history,
    the model, the optimiser, the schedule, the gradient scaler and the data generator's state. A diverging
    loss stops training before any checkpoint of the diverged state is written.
    """
    device = device or resolve_device(cfg)
    splits = splits or id_splits(cfg)
    if len(splits.train) < cfg.batch_size:
        raise ValueError(f"the training set has {len(splits.train)} images, fewer than batch_size {cfg.batch_size}, "
                         "so an epoch would have no step; lower -p batch_size or use more data.")
    ckpt.remove_stale_tmp(ckpt.ensure_writable(checkpoint_dir(cfg)))
    K = splits.num_classes
    model = make_model(cfg, K, device)
    opt, sched = make_optimiser(cfg, model)
    amp = Precision.for_device(device, cfg.precision)
    generator = torch.Generator().manual_seed(cfg.seed)
    start, history = _resume(cfg, model, opt, sched, generator, K, amp)
    if progress and start < cfg.epochs:
        backend = configure_backends(cfg, device)
        print(f"training on {device_name(device)} in {amp.name} ({amp.reason}){', ' + backend if backend else ''}")
    step_model = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
    images, labels = _to_device(splits.train, device)
    stats = (splits.mean.to(device), splits.std.to(device))
    save_at = set(ckpt.checkpoint_epochs(cfg.epochs, cfg.checkpoint_every))
    bar = tqdm(range(start + 1, cfg.epochs + 1), desc="training", disable=not progress, initial=start,
               total=cfg.epochs)
    for epoch in bar:
        lr = opt.param_groups[0]["lr"]
        train_loss, train_acc = train_epoch(step_model, images, labels, stats, opt, generator, cfg, device,
                                            augments_at(cfg, epoch), amp)
        check_divergence(epoch, train_loss, history[0]["train_loss"] if history else None, lr, K)
        sched.step()
        val_loss, val_acc = evaluate(model, splits.val, splits, device, cfg.eval_batch_size)
        test_loss, test_acc = evaluate(model, splits.test, splits, device, cfg.eval_batch_size)
        history.append(dict(epoch=epoch, lr=lr, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                            val_acc=val_acc, test_loss=test_loss, test_acc=test_acc))
        bar.set_postfix(loss=f"{train_loss:.3f}", train_acc=f"{train_acc:.3f}", test_acc=f"{test_acc:.3f}")
        if epoch in save_at:
            ckpt.save_atomic(dict(epoch=epoch, config=cfg.to_dict(), num_classes=K, history=history,
                                  mean=splits.mean, std=splits.std, model=model.state_dict(),
                                  optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                  scaler=amp.scaler.state_dict() if amp.scaler else None,
                                  generator=generator.get_state()),
                             checkpoint_dir(cfg) / f"epoch-{epoch:04d}.pt")
    return model, history


def _to_device(ds: ImageSet, device: torch.device) -> tuple[Tensor, Tensor]:
    """The whole set's uint8 images and labels on ``device`` (pinned for one asynchronous copy on CUDA)."""
    images = ds.images.pin_memory() if device.type == "cuda" else ds.images
    return images.to(device, non_blocking=True), ds.labels.to(device)


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
