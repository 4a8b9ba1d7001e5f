"""Training: SGD with Nesterov momentum, weight decay and a cosine schedule, resumable from checkpoints.

The fast path keeps the whole training set on the device as uint8, draws a batch by indexing, augments
and normalises it there, runs the model in channels_last with bf16 autocast on CUDA, and accumulates loss
and accuracy on the device (no host synchronisation inside the step loop). On the CPU the same code runs
without autocast. Runs are deterministic on the CPU: the model is initialised from ``cfg.seed`` and every
random draw of the data pipeline comes from one seeded generator whose state each checkpoint stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import Config, resolve_device
from .data import ImageSet, Splits, crop_flip, crop_flip_params, id_splits, normalize
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


def train_epoch(model: nn.Module, images: Tensor, labels: Tensor, splits: Splits, opt: torch.optim.Optimizer,
                generator: torch.Generator, cfg: Config, device: torch.device) -> tuple[float, float]:
    """One pass over the device-resident training set; returns (mean loss, accuracy) on augmented batches."""
    model.train()
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(device)
    if cfg.augment:                                                   # one epoch of random draws, one transfer
        params = crop_flip_params(n, generator).to(device, non_blocking=True)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):    # drop the last partial batch (BatchNorm)
        idx = order[start:start + cfg.batch_size]
        x, y = images[idx], labels[idx]
        if cfg.augment:
            x = crop_flip(x, params[start:start + cfg.batch_size])
        x = normalize(x, splits.mean, splits.std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    return (loss_sum / seen).item(), (correct.float() / seen).item()


def _resume(cfg: Config, model: nn.Module, opt, sched, generator: torch.Generator, num_classes: int):
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
    return epoch, list(blob["history"])


def fit(cfg: Config, splits: Splits | None = None, device: torch.device | None = None,
        progress: bool = True) -> tuple[ResNet18, list[dict[str, float]]]:
    """Train ``cfg`` to its last epoch, resuming from the latest complete checkpoint; returns (model, history).

    Checkpoints are saved at :func:`helpers.checkpoint.checkpoint_epochs` and hold the config, the history,
    the model, the optimiser, the schedule and the data generator's state.
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
    generator = torch.Generator().manual_seed(cfg.seed)
    start, history = _resume(cfg, model, opt, sched, generator, K)
    step_model = torch.compile(model) if cfg.compile else model
    pin = device.type == "cuda"
    images = (splits.train.images.pin_memory() if pin else splits.train.images).to(device, non_blocking=True)
    labels = splits.train.labels.to(device)
    save_at = set(ckpt.checkpoint_epochs(cfg.epochs, cfg.checkpoint_every))
    bar = tqdm(range(start + 1, cfg.epochs + 1), desc="training", disable=not progress, initial=start,
               total=cfg.epochs)
    for epoch in bar:
        lr = opt.param_groups[0]["lr"]
        train_loss, train_acc = train_epoch(step_model, images, labels, splits, opt, generator, cfg, device)
        sched.step()
        val_loss, val_acc = evaluate(model, splits.val, splits, device, cfg.eval_batch_size)
        test_loss, test_acc = evaluate(model, splits.test, splits, device, cfg.eval_batch_size)
        history.append(dict(epoch=epoch, lr=lr, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                            val_acc=val_acc, test_loss=test_loss, test_acc=test_acc))
        bar.set_postfix(train_acc=f"{train_acc:.3f}", test_acc=f"{test_acc:.3f}")
        if epoch in save_at:
            ckpt.save_atomic(dict(epoch=epoch, config=cfg.to_dict(), num_classes=K, history=history,
                                  mean=splits.mean, std=splits.std, model=model.state_dict(),
                                  optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                  generator=generator.get_state()),
                             checkpoint_dir(cfg) / f"epoch-{epoch:04d}.pt")
    return model, history


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
