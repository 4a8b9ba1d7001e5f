"""Figures of the book. Every function returns the matplotlib figure (the notebook shows or saves it)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor


# ------------------------------------------------------------------------------------------ training (01)
def image_grid(images: Tensor, labels: Tensor, classes: list[str], n_classes: int = 10, per_class: int = 8,
               title: str = "") -> plt.Figure:
    """A grid of uint8 images (N, 3, H, W): one row per class, ``per_class`` samples each."""
    chosen = sorted(set(labels.tolist()))[:n_classes]
    fig, axes = plt.subplots(len(chosen), per_class, figsize=(per_class * 0.9, len(chosen) * 0.95))
    axes = np.atleast_2d(axes)
    for row, c in enumerate(chosen):
        idx = (labels == c).nonzero().flatten()[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(idx):
                ax.imshow(images[idx[col]].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(classes[c] if c < len(classes) else str(c), fontsize=7, loc="left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def ood_samples(sets: dict[str, Tensor], per_set: int = 8) -> plt.Figure:
    """One row of samples per OOD set (uint8 images (N, 3, H, W))."""
    fig, axes = plt.subplots(len(sets), per_set, figsize=(per_set * 0.9, len(sets) * 1.0), squeeze=False)
    for row, (name, images) in enumerate(sets.items()):
        for col in range(per_set):
            axes[row, col].axis("off")
            if col < len(images):
                axes[row, col].imshow(images[col].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(name, fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def training_curves(history: list[dict[str, float]], tpt_epoch: int | None = None) -> plt.Figure:
    """Loss and accuracy against epoch, train vs validation vs test, with the TPT onset marked."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for split, style in (("train", "-"), ("val", ":"), ("test", "--")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, label=split)
        ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in history], style, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        if tpt_epoch is not None:
            ax.axvline(tpt_epoch, color="grey", lw=1)
            ax.text(tpt_epoch, ax.get_ylim()[1], " TPT", va="top", fontsize=8, color="grey")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
