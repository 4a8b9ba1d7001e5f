"""Results on disk: metrics JSON and figures of a run, and the Results chapter generated from them.

Notebooks save what they measure with :func:`save_metrics` and :func:`save_figure` under the run's
artifacts folder; the runner copies them into a result snapshot and renders ``book/results.md``.
JSON is written with sorted keys and rounded floats, so the same seed and profile give the same bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .checkpoint import ensure_writable
from .config import Config


def _clean(obj: Any, digits: int = 6) -> Any:
    """Round floats (and turn tensors/arrays into lists) so that JSON is stable and readable."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, digits)
    if isinstance(obj, dict):
        return {str(k): _clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v, digits) for v in obj]
    return obj


def metrics_dir(cfg: Config) -> Path:
    return cfg.run_dir() / "metrics"


def figures_dir(cfg: Config) -> Path:
    return cfg.run_dir() / "figures"


def save_metrics(cfg: Config, name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``<run>/metrics/<name>.json`` (atomically, sorted keys, rounded floats)."""
    path = metrics_dir(cfg) / f"{name}.json"
    ensure_writable(path.parent)                 # a clear error when -p artifacts points nowhere writable
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_metrics(folder: Path, name: str) -> dict[str, Any] | None:
    path = Path(folder) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def save_figure(cfg: Config, fig, name: str) -> Path:
    """Save a matplotlib figure as ``<run>/figures/<name>.png``."""
    path = figures_dir(cfg) / f"{name}.png"
    ensure_writable(path.parent)                 # a clear error when -p artifacts points nowhere writable
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
