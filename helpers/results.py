"""The Results chapter, generated from the metrics JSON of the executed run and the committed snapshots."""

from __future__ import annotations

from .config import Config
from .report import load_metrics, metrics_dir


def results_markdown(cfg: Config) -> str:
    """Markdown of ``book/results.md`` for the run of ``cfg``."""
    lines = ["(results)=", "# Results", "", f"Profile `{cfg.profile}`, ID set `{cfg.id_dataset}`.", ""]
    training = load_metrics(metrics_dir(cfg), "training")
    if training:
        lines += [f"Final test accuracy: {100 * training['test_acc']:.1f} %.", ""]
    return "\n".join(lines) + "\n"
