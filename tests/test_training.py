"""Tests for helpers.train: learning, determinism, resuming (also after SIGKILL) and the checkpoint schedule."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import checkpoint as ckpt
from helpers import train
from helpers.data import id_splits

from .conftest import PYTHON, make_tiny, state_dicts_equal, subprocess_env


def _fit(cfg, device):
    return train.fit(cfg, id_splits(cfg), device, progress=False)


def _final_state(cfg) -> dict:
    return ckpt.load(train.checkpoint_dir(cfg) / f"epoch-{cfg.epochs:04d}.pt")


def test_loss_falls_on_a_tiny_set(tmp_path: Path, cpu: torch.device) -> None:
    cfg = make_tiny(tmp_path, per_class=12, batch_size=12, lr=0.02, epochs=15, checkpoint_every=15)
    _, history = _fit(cfg, cpu)
    losses = [r["train_loss"] for r in history]
    assert [r["epoch"] for r in history] == list(range(1, 16))
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses
    assert history[-1]["train_acc"] > 0.5                             # chance is 1/5


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, cpu: torch.device) -> None:
    a, _ = _fit(make_tiny(tmp_path / "a", epochs=2), cpu)
    b, _ = _fit(make_tiny(tmp_path / "b", epochs=2), cpu)
    c, _ = _fit(make_tiny(tmp_path / "c", epochs=2, seed=1), cpu)
    assert state_dicts_equal(a.state_dict(), b.state_dict())
    assert not state_dicts_equal(a.state_dict(), c.state_dict())


def test_learning_rate_follows_the_cosine_schedule(tmp_path: Path, cpu: torch.device) -> None:
    cfg = make_tiny(tmp_path, epochs=4, lr=0.08)
    _, history = _fit(cfg, cpu)
    assert [round(r["lr"], 10) for r in history] == [0.08, round(0.04 * (1 + 2 ** -0.5), 10), 0.04,
                                                     round(0.04 * (1 - 2 ** -0.5), 10)]


def test_resume_from_an_earlier_checkpoint_is_bit_identical(tmp_path: Path, cpu: torch.device) -> None:
    straight = make_tiny(tmp_path / "straight")
    _fit(straight, cpu)
    resumed = make_tiny(tmp_path / "resumed")
    _fit(resumed, cpu)
    for epoch in (2, 3):                                               # as if stopped after epoch 1
        (train.checkpoint_dir(resumed) / f"epoch-{epoch:04d}.pt").unlink()
    model, history = _fit(resumed, cpu)
    a, b = _final_state(straight), _final_state(resumed)
    assert state_dicts_equal(a["model"], b["model"])
    assert state_dicts_equal(a["model"], model.state_dict())
    assert a["history"] == b["history"] == history
    assert torch.equal(a["generator"], b["generator"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert all(torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
               for k in a["optimizer"]["state"])


KILL_SCRIPT = """
import sys
from helpers import config, train
cfg = config.make_config("smoke", **{k: v for k, v in (a.split("=", 1) for a in sys.argv[1:])} | dict(
    num_classes=5, per_class=8, width=4, epochs=20, checkpoint_every=5, batch_size=8))
train.fit(cfg, progress=False)
"""


def _start(artifacts: Path) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-c", KILL_SCRIPT, f"artifacts={artifacts / 'artifacts'}"], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path / "killed", epochs=20, checkpoint_every=5)
    folder = train.checkpoint_dir(cfg)
    proc = _start(tmp_path / "killed")
    uninterrupted = _start(tmp_path / "straight")                      # runs alongside, same environment
    deadline = time.monotonic() + 120
    while not list(folder.glob("epoch-*.pt")):
        assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be killed; give it more epochs"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = ckpt.list_checkpoints(folder)
    assert kept and max(kept) < 20, kept

    again = _start(tmp_path / "killed")
    assert again.wait(timeout=300) == 0, again.stderr.read()[-2000:]
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()[-2000:]
    a = _final_state(cfg)
    b = _final_state(make_tiny(tmp_path / "straight", epochs=20, checkpoint_every=5))
    assert state_dicts_equal(a["model"], b["model"])
    assert json.dumps(a["history"]) == json.dumps(b["history"])
    assert sorted(ckpt.list_checkpoints(folder)) == ckpt.checkpoint_epochs(20, 5)
    assert not [p.name for p in folder.iterdir() if "tmp" in p.name]   # no temporary file left behind


def test_no_temporary_files_are_left_and_stale_ones_are_removed(tmp_path: Path, cpu: torch.device) -> None:
    cfg = make_tiny(tmp_path, epochs=2)
    folder = train.checkpoint_dir(cfg)
    folder.mkdir(parents=True)
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder / f".epoch-0002.pt.tmp-{int(dead.stdout)}"        # left by a writer that no longer exists
    stale.write_bytes(b"half a checkpoint")
    _fit(cfg, cpu)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]


def test_batch_larger_than_the_training_set_is_rejected(tmp_path: Path, cpu: torch.device) -> None:
    cfg = make_tiny(tmp_path, batch_size=128)
    with pytest.raises(ValueError, match=r"the training set has 36 images, fewer than batch_size 128"):
        _fit(cfg, cpu)
    assert not list(train.checkpoint_dir(cfg).glob("*.pt"))


def test_checkpoint_schedule_is_dense_early_regular_later_and_ends_at_the_last_epoch() -> None:
    assert ckpt.checkpoint_epochs(40, 5) == [1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40]
    for epochs, every in [(200, 10), (43, 5), (7, 3), (3, 10), (1, 1), (100, 1)]:
        got = ckpt.checkpoint_epochs(epochs, every)
        assert got == sorted(set(got)) and got[0] == 1 and got[-1] == epochs
        assert all(1 <= e <= epochs for e in got)
        assert set(range(every, epochs + 1, every)) <= set(got)          # every `every` epochs
        late = [e for e in got if e > every]
        assert all(e % every == 0 for e in late[:-1])                    # nothing irregular after the early phase
        if every >= 3 and epochs >= 3:
            assert got[:3] == [1, 2, 3]                                  # dense at the start
    assert ckpt.checkpoint_epochs(3, 10) == [1, 2, 3]
    assert ckpt.checkpoint_epochs(43, 5)[-2:] == [40, 43]


def test_checkpoints_are_found_by_their_stored_epoch(tmp_path: Path, cpu: torch.device) -> None:
    cfg = make_tiny(tmp_path)
    _fit(cfg, cpu)
    folder = train.checkpoint_dir(cfg)
    (folder / "epoch-0003.pt").rename(folder / "final.pt")
    (folder / "epoch-0001.pt").rename(folder / "epoch-0009.pt")
    assert ckpt.list_checkpoints(folder) == {1: folder / "epoch-0009.pt", 2: folder / "epoch-0002.pt",
                                             3: folder / "final.pt"}


def test_load_or_train_reuses_finished_checkpoints(tmp_path: Path, cpu: torch.device) -> None:
    cfg = make_tiny(tmp_path)
    splits = id_splits(cfg)
    model, history, found = train.load_or_train(cfg, splits, cpu, progress=False)
    assert sorted(found) == [1, 2, 3] and not model.training
    stamps = {p: p.stat().st_mtime_ns for p in found.values()}
    again, history2, found2 = train.load_or_train(cfg, splits, cpu, progress=False)
    assert found2 == found and history2 == history
    assert {p: p.stat().st_mtime_ns for p in found2.values()} == stamps      # nothing retrained or rewritten
    assert state_dicts_equal(model.state_dict(), again.state_dict())


def test_load_or_train_resumes_an_unfinished_run(tmp_path: Path, cpu: torch.device) -> None:
    short = make_tiny(tmp_path, epochs=3)
    _fit(short, cpu)
    straight = make_tiny(tmp_path / "b", epochs=3)
    _fit(straight, cpu)
    (train.checkpoint_dir(short) / "epoch-0003.pt").unlink()
    model, history, found = train.load_or_train(short, id_splits(short), cpu, progress=False)
    assert sorted(found) == [1, 2, 3] and [r["epoch"] for r in history] == [1, 2, 3]
    assert state_dicts_equal(model.state_dict(), _final_state(straight)["model"])


def test_load_model_matches_the_checkpoint(tmp_path: Path, cpu: torch.device) -> None:
    cfg = make_tiny(tmp_path, epochs=2)
    model, _ = _fit(cfg, cpu)
    loaded = train.load_model(train.checkpoint_dir(cfg) / "epoch-0002.pt", cfg, 5, cpu)
    assert not loaded.training and state_dicts_equal(loaded.state_dict(), model.state_dict())
