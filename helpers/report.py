"""What a notebook saves: metrics JSON and figures under the run's folder (paths from :mod:`helpers.artifacts`).

Notebooks save what they measure with :func:`save_metrics` and :func:`save_figure`; the runner copies them into
a result snapshot and renders ``book/results.md`` (:mod:`helpers.results`). Every file goes through
:func:`helpers.artifacts.atomic_write`; JSON has sorted keys and rounded floats, so the same seed and profile
give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifacts import RunPaths, atomic_write, ensure_writable, read_json, write_json
from .config import Config


def metrics_dir(cfg: Config) -> Path:
    return RunPaths.of(cfg).metrics


def figures_dir(cfg: Config) -> Path:
    return RunPaths.of(cfg).figures


def save_metrics(cfg: Config, name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``<run>/metrics/<name>.json`` (atomically, sorted keys, rounded floats)."""
    return write_json(ensure_writable(metrics_dir(cfg)) / f"{name}.json", data)


def load_metrics(folder: Path, name: str) -> dict[str, Any] | None:
    """``<folder>/<name>.json``, or None when it does not exist."""
    return read_json(Path(folder) / f"{name}.json")


FIGURE_DPI = 200
"""Resolution of saved figures: slide quality (a 6-inch-wide figure is 1200 pixels wide)."""


def save_figure(cfg: Config, fig, name: str) -> Path:
    """Save a matplotlib figure as ``<run>/figures/<name>.png`` at :data:`FIGURE_DPI` (slides and the Results page)."""
    path = ensure_writable(figures_dir(cfg)) / f"{name}.png"
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=FIGURE_DPI, bbox_inches="tight"))
