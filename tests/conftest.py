"""Shared fixtures: a tiny configuration whose artifacts and data cache live in a temporary folder.

The tiny run has 5 synthetic classes of 8 training images (36 after the validation split), width 4 and a
batch of 8, so one epoch is a handful of SGD steps and takes well under a second on one busy core.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers import config
from helpers.config import REPO_ROOT


def worker_threads() -> dict[str, str]:
    """One OpenMP thread per process when pytest-xdist runs two workers on the two cores: a two-thread job
    beside another process runs 3-6x slower (benchmarks/README.md). Empty when the tests run in one process."""
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else {}


if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

TINY = dict(num_classes=5, per_class=8, width=4, epochs=3, checkpoint_every=1, batch_size=8)


def make_tiny(tmp_path: Path, **overrides) -> config.Config:
    """The tiny smoke configuration with artifacts and data root under ``tmp_path``."""
    values = {**TINY, "artifacts": str(tmp_path / "artifacts"), "data_root": str(tmp_path / "data"), **overrides}
    return config.make_config("smoke", **values)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny trained run shared by the test files of the sweep and of ``helpers.evaluate`` (trained once per
    session): (cfg, splits, OOD sets, {epoch: checkpoint}) with 6 classes, width 4, 2 epochs, a checkpoint each."""
    from helpers import data, train

    root = tmp_path_factory.mktemp("tiny-run")
    cfg = config.make_config("smoke", num_classes=6, per_class=6, width=4, epochs=2, checkpoint_every=1,
                             batch_size=8, ood_subset=20, ood_datasets=("synthetic-digits", "synthetic-near"),
                             artifacts=str(root / "artifacts"), data_root=str(root / "data"))
    splits = data.id_splits(cfg)
    _, _, checkpoints = train.load_or_train(cfg, splits, torch.device("cpu"), progress=False)
    return cfg, splits, data.ood_sets(cfg), checkpoints


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> config.Config:
    return make_tiny(tmp_path)


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch at one thread inside the block, as the children of the runner have (CPU sums depend on the count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: one thread (the machine is shared), no display, the repo importable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


PYTHON = sys.executable


def state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical state dicts: same keys, and every tensor equal element for element."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
