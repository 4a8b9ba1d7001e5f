"""Figures of the book. Every function returns the matplotlib figure; :func:`show` puts it into the notebook.

Figure titles use words, never equation label ids; :data:`LABELS` holds the readable names of the score and
metric keys used in tables and legends.
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

LABELS: dict[str, str] = {
    "msp": "MSP", "maxlogit": "Max Logit", "energy": "Energy", "mahalanobis": "Mahalanobis", "vim": "ViM",
    "neco": "NECO", "neco_maxlogit": "NECO × Max Logit", "knn": "KNN*", "react": "ReAct*", "ash": "ASH-S*",
    "gen": "GEN*", "nc1": "NC1", "cdnv": "CDNV", "nc2_equinorm": "NC2 equinorm (means)",
    "nc2_equinorm_w": "NC2 equinorm (W)", "nc2_equiangular": "NC2 equiangularity (means)",
    "nc2_equiangular_w": "NC2 equiangularity (W)", "nc2_maxangle": "NC2 max-angle (means)",
    "nc2_maxangle_w": "NC2 max-angle (W)", "nc3": "NC3 self-duality", "nc4": "NC4 (train)",
    "test_nc4": "NC4 (test)", "accuracy": "train accuracy", "test_accuracy": "test accuracy",
    "ncc_accuracy": "nearest-mean accuracy (train)", "test_ncc_accuracy": "nearest-mean accuracy (test)",
    "nc5": "NC5 (uncentred)", "nc5_centred": "NC5 (centred)", "auroc": "AUROC (%)", "fpr95": "FPR95 (%)",
    "nc1_per_direction": "NC1 per direction", "ncc_train": "nearest-mean accuracy (train)",
    "ncc_test": "nearest-mean accuracy (test)", "channels": "channels", "low_rank": "fewer than K−1 channels",
    "nc5_rho": "Spearman ρ, NC5 (uncentred)", "nc5_p": "p-value, NC5 (uncentred)",
    "nc5_centred_rho": "Spearman ρ, NC5 (centred)", "nc5_centred_p": "p-value, NC5 (centred)", "n": "checkpoints",
}
"""Readable names of table keys; a ``*`` marks the optional scores beyond the assignment's six."""


def label(key: str) -> str:
    """The readable name of a score or metric key (the key itself when it has none)."""
    return LABELS.get(key, key)


def show(fig: plt.Figure, dpi: int = 100) -> None:
    """Display ``fig`` as a PNG in the notebook and close it: works under any backend, Agg included."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))


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


# ------------------------------------------------------------------------------------------ OOD scores (02)
def _auroc_grid(results: dict[str, dict[str, dict]]) -> tuple[np.ndarray, list[str], list[str]]:
    """AUROC matrix (scores, sets + "average") of {score: {set: summary}}, with row and column names."""
    rows = list(results)
    sets = list(dict.fromkeys(s for per_set in results.values() for s in per_set))
    grid = np.array([[results[r].get(s, {}).get("auroc", np.nan) for s in sets] for r in rows])  # (S, O)
    return np.column_stack([grid, grid.mean(axis=1)]), rows, sets + ["average"]


def score_histograms(raw: dict[str, dict[str, np.ndarray]], id_name: str, ood_names: list[str] | None = None,
                     bins: int = 40, ncols: int = 5) -> plt.Figure:
    """One panel per score: density of the ID scores (filled) and of each OOD set (lines); higher = ID.

    ``raw`` is {score: {set: (N_set,) scores}}; bins span the 0.5-99.5 % quantiles of the shown scores.
    """
    names = list(raw)
    ood_names = ood_names or [s for s in next(iter(raw.values())) if s != id_name]
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 2.3 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        shown = np.concatenate([raw[name][s] for s in [id_name, *ood_names]])
        edges = np.linspace(*np.quantile(shown, [0.005, 0.995]), bins + 1)
        ax.hist(raw[name][id_name], edges, density=True, color="0.75", label=id_name)
        for s in ood_names:
            ax.hist(raw[name][s], edges, density=True, histtype="step", lw=1.3, label=s)
        ax.set_title(label(name), fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Score distributions (higher = more in-distribution)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def roc_curves(raw: dict[str, dict[str, np.ndarray]], id_name: str, ood_name: str) -> plt.Figure:
    """ROC curves of every score for one OOD set, ID positive: TPR = ID kept, FPR = OOD accepted."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name, per_set in raw.items():
        s = np.concatenate([per_set[id_name], per_set[ood_name]])
        is_id = np.r_[np.ones(len(per_set[id_name])), np.zeros(len(per_set[ood_name]))]
        fpr, tpr, _ = roc_curve(is_id, s)
        ax.plot(fpr, tpr, lw=1.2, label=f"{label(name)} ({100 * roc_auc_score(is_id, s):.1f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set(xlabel=f"FPR: {ood_name} accepted as ID", ylabel=f"TPR: {id_name} kept", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC, {id_name} vs {ood_name} (AUROC %)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def neco_dim_sweep(sweep: dict) -> plt.Figure:
    """AUROC of NECO against d per OOD set (log x axis), cumulative explained variance on a twin axis,
    and the d of the explained-variance rule marked; ``sweep`` as returned by ``protocol.neco_sweep``."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, auroc in sweep["auroc"].items():
        ax.plot(sweep["dims"], 100 * np.asarray(auroc), marker=".", lw=1.2, label=name)
    ax.axvline(sweep["chosen_dim"], color="grey", lw=1, ls="--")
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="principal components d", ylabel="AUROC (%)", title="NECO against d")
    twin = ax.twinx()
    twin.plot(sweep["dims"], sweep["explained_variance"], color="black", lw=1, ls="-.", label="explained variance")
    twin.set(ylabel="cumulative explained variance", ylim=(0, 1.02))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def auroc_heatmap(results: dict[str, dict[str, dict]]) -> plt.Figure:
    """Heat map of AUROC (%) per score (rows) and OOD set (columns, plus the average); 50 is chance."""
    grid, rows, cols = _auroc_grid(results)
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2, 0.42 * len(rows) + 1.4))
    im = ax.imshow(100 * grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [label(r) for r in rows], fontsize=8)
    ax.axvline(len(cols) - 1.5, color="black", lw=1)
    fig.colorbar(im, ax=ax, label="AUROC (%)")
    ax.set_title("AUROC per score and OOD set")
    fig.tight_layout()
    return fig


def validation_curve(values: list, aurocs: list[float], chosen, param: str, title: str = "") -> plt.Figure:
    """Validation AUROC against the candidate values of one hyper-parameter, the chosen value marked."""
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    ax.plot(values, 100 * np.asarray(aurocs), marker="o", lw=1.2)
    ax.axvline(chosen, color="grey", lw=1, ls="--")
    ax.set(xscale="log", xlabel=param, ylabel="validation AUROC (%)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ neural collapse (03–05)
def _series(rows: list[dict], key: str, **match) -> tuple[list, list]:
    """(epochs, values) of ``key`` over the rows whose fields equal ``match`` (e.g. ood_set="x")."""
    sub = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return [r["epoch"] for r in sub], [r[key] for r in sub]


def _log_if_spread(ax: plt.Axes, values: list[float]) -> None:
    """Log-scale the y axis when the positive values span more than a decade."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size and v.min() > 0 and v.max() / v.min() > 10:
        ax.set_yscale("log")


def _mark_tpt(ax: plt.Axes, tpt_epoch: int | None) -> None:
    if tpt_epoch is not None:
        ax.axvline(tpt_epoch, color="grey", lw=1)
        ax.text(tpt_epoch, 1.0, " TPT", va="top", fontsize=8, color="grey", transform=ax.get_xaxis_transform())


_COLLAPSE_PANELS = (
    ("NC1: within-class variability, and CDNV", (("nc1", "NC1"), ("cdnv", "CDNV"))),
    ("NC2: equal norms", (("nc2_equinorm", "class means"), ("nc2_equinorm_w", "classifier W"))),
    ("NC2: equal angles", (("nc2_equiangular", "class means"), ("nc2_equiangular_w", "classifier W"))),
    ("NC3: classifier aligned with the means", (("nc3", "NC3"),)),
    ("NC4: network vs nearest mean", (("nc4", "train"), ("test_nc4", "test"))),
    ("Accuracy", (("accuracy", "network, train"), ("test_accuracy", "network, test"),
                  ("test_ncc_accuracy", "nearest mean, test"))),
)


def collapse_curves(rows: list[dict], tpt_epoch: int | None = None) -> plt.Figure:
    """NC1–NC4 and accuracies against epoch (one row per checkpoint), log y where values span decades."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.8))
    for ax, (title, curves) in zip(axes.flat, _COLLAPSE_PANELS, strict=True):
        values = []
        for key, label in curves:
            epochs, v = _series(rows, key)
            ax.plot(epochs, v, "o-", ms=3, label=label)
            values += v
        _log_if_spread(ax, values)
        _mark_tpt(ax, tpt_epoch)
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def gram_heatmaps(grams: dict[str, Tensor]) -> plt.Figure:
    """Cosine Gram matrices (K, K) side by side on one colour scale [-1, 1]."""
    fig, axes = plt.subplots(1, len(grams), figsize=(4.2 * len(grams) + 1, 4), layout="constrained")
    for ax, (title, G) in zip(np.atleast_1d(axes), grams.items(), strict=True):
        im = ax.imshow(np.asarray(G), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set(title=title, xlabel="class", ylabel="class")
    fig.colorbar(im, ax=axes, shrink=0.9, label="cosine")
    return fig


def _draw_frame(ax: plt.Axes, frame: dict, limit: float) -> None:
    """One frame of the class-mean animation: samples as dots, class means as stars, coloured by class."""
    colours = plt.get_cmap("tab10")
    for i, c in enumerate(frame["classes"]):
        pts = frame["samples"][frame["sample_labels"] == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=8, color=colours(i % 10), alpha=0.5, lw=0)
        ax.scatter(*frame["means"][i], s=160, marker="*", color=colours(i % 10), edgecolor="k", lw=0.7)
    ax.scatter(0, 0, marker="+", color="k", s=60)
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", xticks=[], yticks=[],
           title=f"epoch {frame['epoch']}")


def _frame_limit(frames: list[dict]) -> float:
    """Half-width of the common axes: the 98th percentile of all coordinates, at least the means' extent."""
    coords = np.concatenate([np.abs(np.concatenate([f["samples"], f["means"]])).ravel() for f in frames])
    means = max(np.abs(f["means"]).max() for f in frames)
    return 1.1 * max(float(np.percentile(coords, 95)), float(means))


def class_means_snapshots(frames: list[dict], n_panels: int = 4) -> plt.Figure:
    """Frames of :func:`helpers.sweep.mean_geometry_frames` at ``n_panels`` evenly spaced checkpoints."""
    picks = sorted(set(np.linspace(0, len(frames) - 1, min(n_panels, len(frames))).round().astype(int)))
    limit = _frame_limit(frames)
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.6), squeeze=False, layout="constrained")
    for ax, i in zip(axes[0], picks, strict=True):
        _draw_frame(ax, frames[i], limit)
    fig.suptitle("Class means (stars) and training samples (dots) on the top-2 principal directions of the means")
    return fig


def class_means_gif(frames: list[dict], path, ms_per_frame: int = 700) -> str:
    """Write the frames as an animated GIF at ``path`` (looping, last frame held longer); returns the path."""
    import imageio.v3 as iio  # only this function needs it

    from .artifacts import atomic_write

    limit, images = _frame_limit(frames), []
    for frame in frames:
        fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=90)
        _draw_frame(ax, frame, limit)
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())   # (H, W, 3) uint8
        plt.close(fig)
    if not images:
        raise ValueError("no frames to write: the class-mean animation needs at least one checkpoint")
    durations = [ms_per_frame] * (len(images) - 1) + [3 * ms_per_frame]
    # Pillow takes a list of durations only for several frames (one checkpoint, e.g. a 1-epoch run, gives one).
    duration = durations if len(images) > 1 else durations[0]
    gif = iio.imwrite("<bytes>", np.stack(images), extension=".gif", duration=duration, loop=0)
    return str(atomic_write(path, lambda f: f.write(gif)))


def nc5_curves(rows: list[dict], tpt_epoch: int | None = None) -> plt.Figure:
    """NC5 (uncentred, centred) and NECO's AUROC against epoch, one line per OOD set."""
    names = list(dict.fromkeys(r["ood_set"] for r in rows))
    panels = (("nc5", "NC5, uncentred"), ("nc5_centred", "NC5, centred on the ID mean"),
              ("auroc", "NECO AUROC (%)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name in names:
            epochs, values = _series(rows, key, ood_set=name)
            ax.plot(epochs, 100 * np.asarray(values) if key == "auroc" else values, "o-", ms=3, label=name)
        _mark_tpt(ax, tpt_epoch)
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def nc5_scatter(rows: list[dict]) -> plt.Figure:
    """NECO's AUROC against NC5 (uncentred and centred): one point per (checkpoint, OOD set), joined in epoch
    order; the last checkpoint is circled."""
    names = list(dict.fromkeys(r["ood_set"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key in zip(axes, ("nc5", "nc5_centred"), strict=True):
        for name in names:
            sub = [r for r in rows if r["ood_set"] == name]
            x, y = [r[key] for r in sub], [100 * r["auroc"] for r in sub]
            line, = ax.plot(x, y, "o-", ms=4, lw=0.8, alpha=0.8, label=name)
            ax.scatter(x[-1], y[-1], s=120, facecolor="none", edgecolor=line.get_color())
        ax.set(xlabel=label(key), title=f"NECO AUROC against {label(key)}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NECO AUROC (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def id_ood_projection(proj: dict) -> plt.Figure:
    """ID class means, ID test features and OOD features on the principal directions of the ID class means
    (2-D panel, plus a 3-D panel when three components are given)."""
    k = proj["means"].shape[1]
    fig = plt.figure(figsize=(11 if k >= 3 else 5.5, 5))
    panels = [(fig.add_subplot(1, 2 if k >= 3 else 1, 1), 2)]
    if k >= 3:
        panels.append((fig.add_subplot(1, 2, 2, projection="3d"), 3))
    for ax, dims in panels:
        groups = [("ID test", proj["id"], "grey")] + [(n, x, None) for n, x in proj["ood"].items()]
        for label, x, colour in groups:
            ax.scatter(*x[:, :dims].T, s=5, alpha=0.35, label=label, color=colour)
        ax.scatter(*proj["means"][:, :dims].T, s=40, marker="*", color="k", label="ID class means")
        ax.set(xlabel="PC 1", ylabel="PC 2", title=f"{dims}-D projection")
        if dims == 3:
            ax.set_zlabel("PC 3")
    panels[0][0].legend(fontsize=8, markerscale=2)
    panels[0][0].grid(alpha=0.3)
    fig.tight_layout()
    return fig


_LAYER_PANELS = (("nc1", "NC1", True), ("nc1_per_direction", "NC1 per between-class direction", True),
                 ("cdnv", "CDNV", True), ("nc2_equiangular", "NC2 equiangularity", False),
                 ("ncc_train", "NCC accuracy, train", False), ("ncc_test", "NCC accuracy, test", False))


def _block_labels(rows: list[dict]) -> list[str]:
    """Tick labels 'block (channels)', with a '*' where channels < K-1."""
    seen = {r["block"]: r for r in rows}
    return [f"{b} ({seen[b]['channels']}){'*' if seen[b]['low_rank'] else ''}" for b in sorted(seen)]


def layer_heatmaps(rows: list[dict]) -> plt.Figure:
    """Block × epoch heatmaps of NC1, NC1 per direction, CDNV (log colour where they span decades),
    NC2 equiangularity and NCC accuracy (train, test)."""
    epochs, blocks = sorted({r["epoch"] for r in rows}), sorted({r["block"] for r in rows})
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.2))
    for ax, (key, title, log) in zip(axes.flat, _LAYER_PANELS, strict=True):
        grid = np.full((len(blocks), len(epochs)), np.nan)
        for r in rows:
            value = r[key]
            grid[blocks.index(r["block"]), epochs.index(r["epoch"])] = np.nan if value is None else value
        finite = grid[np.isfinite(grid) & (grid > 0)] if log else grid
        norm = "log" if log and finite.size and finite.max() / finite.min() > 10 else None
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(epochs)), epochs, fontsize=7)
        ax.set_yticks(range(len(blocks)), _block_labels(rows), fontsize=7)
        ax.set(xlabel="epoch", ylabel="block (channels)", title=title)
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.tight_layout()
    return fig


def layer_profile(rows: list[dict], epoch: int) -> plt.Figure:
    """NC1, NC2 equiangularity and NCC accuracy per block at ``epoch``; blocks with fewer than K-1 channels
    are shaded."""
    sub = sorted((r for r in rows if r["epoch"] == epoch), key=lambda r: r["block"])
    blocks = [r["block"] for r in sub]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    curves = ((("nc1", "NC1"), ("nc1_per_direction", "NC1 per direction"), ("cdnv", "CDNV")),
              (("nc2_equiangular", "NC2 equiangularity"),), (("ncc_train", "train"), ("ncc_test", "test")))
    for ax, keys in zip(axes, curves, strict=True):
        for key, label in keys:
            ax.plot(blocks, [r[key] for r in sub], "o-", label=label)
        for r in sub:
            if r["low_rank"]:
                ax.axvspan(r["block"] - 0.5, r["block"] + 0.5, color="grey", alpha=0.15, lw=0)
        ax.set(xlabel="residual block", xticks=blocks)
        ax.grid(alpha=0.3)
    axes[0].set_title("Within-class variability")
    axes[1].set_title("NC2 equiangularity")
    axes[2].set_title("NCC accuracy")
    _log_if_spread(axes[0], [r[k] for r in sub for k in ("nc1", "nc1_per_direction", "cdnv")])
    for ax in (axes[0], axes[2]):
        ax.legend(fontsize=8)
    fig.suptitle(f"Epoch {epoch}" + (" (shaded: fewer than K-1 channels)" if any(r["low_rank"] for r in sub) else ""))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ pictures before formulas
def roc_sketch(separation: float = 1.5, seed: int = 0) -> plt.Figure:
    """Two Gaussian score distributions (ID right, OOD left) and their ROC curve, with FPR95 and the AUROC
    marked: the picture behind the book's chapter "Evaluating an OOD detector"."""
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    s_id, s_ood = rng.normal(separation, 1, 4000), rng.normal(0, 1, 4000)       # (N,), (N,)
    threshold = np.quantile(s_id, 0.05)                                          # keeps 95 % of ID
    fig, (ax_h, ax_r) = plt.subplots(1, 2, figsize=(9, 3.2))
    edges = np.linspace(-4, 4 + separation, 60)
    ax_h.hist(s_id, edges, density=True, color="0.7", label="ID")
    ax_h.hist(s_ood, edges, density=True, histtype="step", lw=1.5, label="OOD")
    ax_h.axvline(threshold, color="k", ls="--", lw=1)
    ax_h.set(xlabel="score S(x) (higher = more ID)", yticks=[], title="Accept x as ID when S(x) ≥ threshold")
    ax_h.legend(fontsize=8)
    is_id = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    fpr, tpr, _ = roc_curve(is_id, np.r_[s_id, s_ood])
    ax_r.fill_between(100 * fpr, 100 * tpr, color="C0", alpha=0.15)
    ax_r.plot(100 * fpr, 100 * tpr, lw=1.5)
    ax_r.axhline(95, color="grey", ls="--", lw=0.8)
    ax_r.plot(100 * (s_ood >= threshold).mean(), 95, "ko", ms=4)
    ax_r.set(xlabel="OOD accepted (FPR, %)", ylabel="ID kept (TPR, %)", aspect="equal",
             title=f"ROC: shaded area = AUROC = {100 * roc_auc_score(is_id, np.r_[s_id, s_ood]):.0f} %")
    fig.tight_layout()
    return fig


def etf_sketch() -> plt.Figure:
    """The simplex ETF for K = 3 (a triangle in the plane) and K = 4 (a tetrahedron in 3-D), unit vectors
    with pairwise cosine -1/(K-1) around the global mean."""
    from .collapse import simplex_etf

    fig = plt.figure(figsize=(8, 3.6))
    ax2 = fig.add_subplot(1, 2, 1)
    tri = simplex_etf(3, 2).numpy()                                              # (3, 2)
    for v in tri:
        ax2.annotate("", v, (0, 0), arrowprops=dict(arrowstyle="->", lw=1.5))
    ax2.fill(*tri.T, alpha=0.1)
    ax2.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal", xticks=[], yticks=[],
            title="K = 3: 120° apart, cosine −1/2")
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    tet = simplex_etf(4, 3).numpy()                                              # (4, 3)
    for v in tet:
        ax3.plot(*np.c_[np.zeros(3), v], lw=1.5)
    for i in range(4):
        for j in range(i + 1, 4):
            ax3.plot(*np.c_[tet[i], tet[j]], color="grey", lw=0.6)
    ax3.set(xticks=[], yticks=[], zticks=[])
    ax3.set_title("K = 4: cosine −1/3, in K − 1 = 3 dimensions", fontsize=9)
    fig.tight_layout()
    return fig


def collapse_cartoon(seed: int = 0) -> plt.Figure:
    """Three classes in 2-D early in training (wide clouds) and in the terminal phase (points at the vertices of
    an ETF), with the class means as stars: NC1 and NC2 at a glance."""
    from .collapse import simplex_etf

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    means_early = np.array([[0.9, 0.1], [-0.2, 0.7], [-0.4, -0.9]])              # (3, 2), unequal
    for ax, means, spread, title in ((axes[0], means_early, 0.45, "early: wide clouds, uneven means"),
                                     (axes[1], simplex_etf(3, 2).numpy(), 0.05, "terminal phase: NC1 and NC2")):
        for c, mu in enumerate(means):
            pts = mu + spread * rng.standard_normal((40, 2))                     # (40, 2)
            ax.scatter(*pts.T, s=8, color=f"C{c}", alpha=0.5, lw=0)
            ax.scatter(*mu, s=180, marker="*", color=f"C{c}", edgecolor="k", lw=0.7)
            ax.plot([0, mu[0]], [0, mu[1]], color="grey", lw=0.6)
        ax.scatter(0, 0, marker="+", color="k", s=60)
        ax.set(xlim=(-1.7, 1.7), ylim=(-1.7, 1.7), aspect="equal", xticks=[], yticks=[], title=title)
    fig.tight_layout()
    return fig
