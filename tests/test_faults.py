"""Faults a long run meets (issue 16), each injected: a diverging loss, damaged feature-cache files, two runs on
one artifacts folder, a full disk during a checkpoint, cache or metrics write, and an interrupted runner.
Each test checks the one-line message and that nothing finished was lost."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch

from helpers import artifacts, features, run, train
from helpers import checkpoint as ckpt
from helpers.data import id_splits

from .conftest import PYTHON, TINY, make_tiny, one_thread, state_dicts_equal, subprocess_env

CPU = torch.device("cpu")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


# ------------------------------------------------------------------------------------------- 1. divergence
def _blow_up_at(epoch: int, factor: float):
    """``train.make_optimiser`` whose schedule multiplies the learning rate by ``factor`` from ``epoch`` on."""
    def make(cfg, model):
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                              weight_decay=cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda e: factor if e + 1 >= epoch else 1.0)
    return make


def test_divergence_stops_with_one_line_and_keeps_the_earlier_checkpoints(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_tiny(tmp_path, epochs=4)
    huge = cfg.lr * 1e6
    monkeypatch.setattr(train, "make_optimiser", _blow_up_at(3, 1e6))
    with pytest.raises(train.TrainingDivergedError) as err:
        train.fit(cfg, id_splits(cfg), CPU, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("training diverged at epoch 3: mean loss ")
    assert f"at lr {huge:g};" in message and "lower -p lr" in message
    folder = train.checkpoint_dir(cfg)
    assert list(ckpt.list_checkpoints(folder)) == [1, 2]              # nothing of the diverged epoch 3
    for epoch, path in ckpt.list_checkpoints(folder).items():
        model = train.load_model(path, cfg, 5, CPU)                    # intact and usable
        assert all(torch.isfinite(p).all() for p in model.state_dict().values())
        assert ckpt.load(path)["history"][-1]["epoch"] == epoch
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]


# ------------------------------------------------------------------------------------- 3. the feature cache
@pytest.fixture
def trained(tmp_path: Path):
    cfg = make_tiny(tmp_path, epochs=2)
    train.fit(cfg, id_splits(cfg), CPU, progress=False)
    return cfg, id_splits(cfg), ckpt.list_checkpoints(train.checkpoint_dir(cfg))[2]


def _only_warning(record: list[warnings.WarningMessage]) -> str:
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    return messages[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "other_version"])
def test_a_damaged_cache_file_is_reported_once_and_rewritten(trained, damage: str) -> None:
    cfg, splits, path = trained
    sets = {"test": splits.test}
    fresh = features.at_checkpoint(cfg, path, splits, sets, CPU)["test"]
    cached = features.cache_path(cfg.run_dir() / "features", path, splits.test, splits.mean, splits.std)
    raw = cached.read_bytes()
    bad = {"truncate": raw[: len(raw) // 2], "garbage": os.urandom(2000), "foreign": None, "other_version": None}
    if damage == "foreign":
        torch.save(torch.zeros(3), cached)
    elif damage == "other_version":
        torch.save({"format": "oodnc-features-v1", "tensors": [fresh.logits, fresh.features, fresh.labels]}, cached)
    else:
        cached.write_bytes(bad[damage])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = features.at_checkpoint(cfg, path, splits, sets, CPU)["test"]
    message = _only_warning(record)
    assert message.startswith(f"feature cache {cached} is unusable (") and message.endswith("recomputed and rewritten.")
    assert torch.equal(again.logits, fresh.logits) and torch.equal(again.features, fresh.features)
    assert cached.read_bytes() == raw                                  # rewritten, byte for byte as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # and read silently from now on
        features.at_checkpoint(cfg, path, splits, sets, CPU)


def test_block_outputs_are_stored_only_when_asked_for_in_their_own_file(trained) -> None:
    cfg, splits, path = trained
    sets = {"val": splits.val}
    plain = features.at_checkpoint(cfg, path, splits, sets, CPU)["val"]
    assert plain.blocks is None
    folder = cfg.run_dir() / "features"
    assert not list(folder.glob("*/*.blocks.pt"))
    cold = features.at_checkpoint(cfg, path, splits, sets, CPU, blocks=True)["val"]
    blocks_file = features.blocks_path(features.cache_path(folder, path, splits.val, splits.mean, splits.std))
    blocks_file.write_bytes(blocks_file.read_bytes()[:100])           # a torn blocks file: one warning, rebuilt
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warm = features.at_checkpoint(cfg, path, splits, sets, CPU, blocks=True)["val"]
    assert "is unusable" in _only_warning(record)
    assert len(cold.blocks) == len(warm.blocks) == 8
    assert all(torch.equal(a, b) for a, b in zip(cold.blocks, warm.blocks, strict=True))   # cold == warm
    assert torch.equal(cold.blocks[-1], plain.features)


def test_the_checkpoint_digest_is_recorded_at_save_time(trained, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, path = trained
    blob = ckpt.load(path)
    assert blob["digest"] == ckpt.weights_digest(blob["model"])
    changed = {k: v.clone() for k, v in blob["model"].items()}
    name = next(k for k, v in changed.items() if v.is_floating_point())
    changed[name].view(-1)[0] += 1
    assert ckpt.weights_digest(changed) != blob["digest"]             # one weight changed: another key
    older = tmp_path / "older.pt"
    torch.save({k: v for k, v in blob.items() if k != "digest"}, older)   # saved by code without the digest
    assert ckpt.digest(older) == "file-" + hashlib.sha256(older.read_bytes()).hexdigest()[:16]

    def no_hashing(*args, **kwargs):
        raise AssertionError("the checkpoint was hashed again")

    monkeypatch.setattr(ckpt.hashlib, "sha256", no_hashing)
    assert ckpt.digest(path) == blob["digest"]                        # read from the metadata, not recomputed


def test_a_sets_pixel_digest_is_computed_once_and_follows_changes(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, splits, path = trained
    calls = []
    real = hashlib.blake2b
    monkeypatch.setattr(features.hashlib, "blake2b", lambda **k: calls.append(1) or real(**k))
    ds = splits.test.subset(torch.arange(len(splits.test)))
    key = dict(cache_dir=Path("c"), checkpoint=path, ds=ds, mean=splits.mean, std=splits.std)
    first = features.cache_path(**key)
    assert features.cache_path(**key) == first and len(calls) == 1
    ds.images[0, 0, 0, 0] ^= 1                                        # an in-place change is seen
    assert features.cache_path(**key) != first and len(calls) == 2
    assert features.cache_path(**key, precision="bf16") != features.cache_path(**key)
    assert features.cache_path(**key, device_type="cuda") != features.cache_path(**key)
    assert len(calls) == 2                                            # the other keys reuse the digest


def test_the_cache_key_changes_with_the_format_version(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    _, splits, path = trained
    key = dict(cache_dir=Path("c"), checkpoint=path, ds=splits.test, mean=splits.mean, std=splits.std)
    now = features.cache_path(**key)
    monkeypatch.setattr(features, "CACHE_FORMAT", "oodnc-features-v999")
    assert features.cache_path(**key) != now


# ------------------------------------------------------------------------------------------------ 4. lock
HOLD = """
import sys, time
from pathlib import Path
from helpers import artifacts
with artifacts.run_lock(artifacts.RunPaths(Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


def _hold_lock(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-c", HOLD, str(root), str(seconds)], env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_told_who_holds_the_folder(tmp_path: Path) -> None:
    paths = artifacts.RunPaths(tmp_path / "run")
    holder = _hold_lock(paths.root, 30)
    try:
        with pytest.raises(artifacts.RunLockedError) as err, artifacts.run_lock(paths):
            pass
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"the run folder {paths.root} is in use by run pid {holder.pid} on "
                                  f"{socket.gethostname()}, started 20")
        assert "--wait-for-lock" in message
    finally:
        holder.kill()
        holder.wait()


def test_waiting_queues_behind_the_holder(tmp_path: Path) -> None:
    paths = artifacts.RunPaths(tmp_path / "run")
    holder = _hold_lock(paths.root, 1.5)
    start = time.monotonic()
    with artifacts.run_lock(paths, wait=True, poll=0.05) as me:
        assert time.monotonic() - start > 1.0                          # queued while the holder slept
        assert holder.stdout.readline().strip() == "released"          # and got it once the holder let go
        assert me["pid"] == os.getpid() and json.loads(paths.lock.read_text()) == me
    holder.wait()


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    paths = artifacts.RunPaths(tmp_path / "run")
    holder = _hold_lock(paths.root, 60)
    holder.send_signal(signal.SIGKILL)                                 # dies holding it
    holder.wait()
    assert json.loads(paths.lock.read_text())["pid"] == holder.pid     # its record is still there
    with artifacts.run_lock(paths) as me:
        assert json.loads(paths.lock.read_text()) == me and me["pid"] == os.getpid()


def test_the_lock_is_shared_with_the_processes_a_run_starts(tmp_path: Path) -> None:
    """The runner holds the lock while its notebook kernel trains: nested holders in the same process tree pass."""
    paths = artifacts.RunPaths(tmp_path / "run")
    with artifacts.run_lock(paths):
        with artifacts.run_lock(paths):
            pass
        child = subprocess.run([PYTHON, "-c", HOLD, str(paths.root), "0"], env={**subprocess_env(), **os.environ},
                               capture_output=True, text=True, timeout=120)
        assert child.returncode == 0 and child.stdout.split() == ["held", "released"], child.stderr
    assert artifacts.LOCK_ENV not in os.environ


def test_the_runner_stops_with_one_line_when_the_folder_is_locked(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    cfg = make_tiny(tmp_path)
    holder = _hold_lock(cfg.run_dir(), 30)
    tiny = [x for k, v in TINY.items() for x in ("-p", k, str(v))]
    args = ["--profile", "smoke", *tiny, "-p", "artifacts", str(tmp_path / "artifacts"), "--only", "01", "--no-book",
            "--out", str(tmp_path / "out")]
    try:
        assert run.main(args) == 1
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: the run folder {cfg.run_dir()} is in use by run pid "
                                                   f"{holder.pid}")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ 5. a full disk
FULL_DISK = """
import json, resource, signal, sys, torch
from pathlib import Path
from helpers import artifacts, checkpoint, features
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # so that a write past the limit fails with EFBIG
folder = Path(sys.argv[1])
writes = {
    "checkpoint": lambda: checkpoint.save_atomic({"epoch": 1, "w": torch.ones(200_000)}, folder / "epoch-0001.pt"),
    "cache": lambda: features.write_cache(folder / "test-abc.pt",
                                          features.Features(torch.ones(50_000, 4), torch.ones(50_000, 4),
                                                            torch.zeros(50_000, dtype=torch.long))),
    "metrics": lambda: artifacts.write_json(folder / "ood.json", {"x": list(range(200_000))}),
}
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
out = {}
for name, write in writes.items():
    try:
        write()
        out[name] = "written"
    except artifacts.ArtifactsError as err:
        out[name] = str(err)
print(json.dumps(out))
"""


def test_a_full_disk_leaves_the_previous_files_intact(tmp_path: Path) -> None:
    """A tiny RLIMIT_FSIZE makes every write past 100 kB fail, as on a full disk."""
    folder = tmp_path / "run"
    folder.mkdir()
    ckpt.save_atomic({"epoch": 1, "w": torch.zeros(10)}, folder / "epoch-0001.pt")
    features.write_cache(folder / "test-abc.pt", features.Features(torch.zeros(2, 4), torch.zeros(2, 4),
                                                                   torch.zeros(2, dtype=torch.long)))
    artifacts.write_json(folder / "ood.json", {"x": 1})
    before = _files(folder)
    result = subprocess.run([PYTHON, "-c", FULL_DISK, str(folder)], env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    messages = json.loads(result.stdout)
    for name, file in (("checkpoint", "epoch-0001.pt"), ("cache", "test-abc.pt"), ("metrics", "ood.json")):
        assert messages[name] == (f"could not write {folder / file} (the disk is full); the previous file, if any, "
                                  "is intact; free space or point -p artifacts elsewhere, then run again."), name
    assert _files(folder) == before                                    # old files intact, no partial file left
    assert ckpt.load(folder / "epoch-0001.pt")["epoch"] == 1


@pytest.mark.parametrize("errno_name, why", [("ENOSPC", "the disk is full"), ("EIO", "Input/output error")])
def test_a_failing_fsync_is_one_line_and_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                errno_name: str, why: str) -> None:
    import errno

    path = artifacts.write_json(tmp_path / "metrics.json", {"old": 1})

    def failing_fsync(fd: int) -> None:
        raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))

    monkeypatch.setattr(artifacts.os, "fsync", failing_fsync)
    with pytest.raises(artifacts.ArtifactsError) as err:
        artifacts.write_json(path, {"new": 2})
    assert str(err.value).startswith(f"could not write {path} ({why}); the previous file, if any, is intact")
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_torch_error_that_is_not_a_write_error_is_not_disguised(tmp_path: Path) -> None:
    with pytest.raises(Exception) as err:                              # noqa: PT011 - whatever torch raises
        artifacts.write_torch({"f": lambda: 1}, tmp_path / "x.pt")     # unpicklable, not a disk problem
    assert not isinstance(err.value, artifacts.ArtifactsError)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ 6. an interrupted runner
SMOKE = ["-p", "epochs", "4", "-p", "per_class", "8", "-p", "num_classes", "10", "-p", "batch_size", "8"]


def _start(tmp_path: Path) -> subprocess.Popen:
    args = ["--profile", "smoke", *SMOKE, "-p", "artifacts", str(tmp_path / "artifacts"), "--only", "01",
            "--no-book", "--out", str(tmp_path / "out")]
    return subprocess.Popen([PYTHON, "-m", "helpers.run", *args], cwd=run.REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _kernel_pids(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True) if "ipykernel" in " ".join(c.cmdline())]


@pytest.mark.slow
def test_an_interrupted_runner_keeps_its_checkpoints_and_resumes_bit_identically(tmp_path: Path) -> None:
    """SIGTERM (what a scheduler sends) mid-training; SIGINT takes the same path once it is an interrupt, which
    :func:`test_a_signal_becomes_an_interrupt_and_the_handlers_come_back` checks for both signals."""
    sig = signal.SIGTERM
    import psutil

    from helpers.config import make_config

    cfg = make_config("smoke", epochs=4, per_class=8, num_classes=10, batch_size=8,
                      artifacts=str(tmp_path / "artifacts"))
    folder = train.checkpoint_dir(cfg)
    proc = _start(tmp_path)
    _wait_for(lambda: (folder / "epoch-0001.pt").exists() and _kernel_pids(proc.pid), 900, proc)
    kernels = _kernel_pids(proc.pid)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    [line] = [x for x in stderr.splitlines() if x.startswith("error:")]
    epochs = list(ckpt.list_checkpoints(folder))
    assert epochs and epochs[-1] < 4, epochs                            # interrupted mid-training
    assert line == (f"error: interrupted by {sig.name} during 01_training.ipynb; kept the checkpoints up to epoch "
                    f"{epochs[-1]} of 4 in {folder}; run the same command again to resume.")
    assert not [p for p in kernels if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    kept = _files(folder)
    assert not (cfg.run_dir() / "metrics" / "training.json").exists()
    assert json.loads((cfg.run_dir() / "run.json").read_text())["complete"] is False
    again = _start(tmp_path)
    _, stderr = again.communicate(timeout=900)
    assert again.returncode == 0, stderr[-3000:]
    assert json.loads((cfg.run_dir() / "run.json").read_text())["complete"] is True
    assert {k: v for k, v in _files(folder).items() if k in kept} == kept   # nothing kept was rewritten
    resumed = ckpt.load(folder / "epoch-0004.pt")["model"]
    reference = make_config("smoke", epochs=4, per_class=8, num_classes=10, batch_size=8,
                            artifacts=str(tmp_path / "reference"))
    with one_thread():                                                 # as in the runner's kernel
        model, _ = train.fit(reference, id_splits(reference), CPU, progress=False)
    assert state_dicts_equal(resumed, model.state_dict())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_becomes_an_interrupt_and_the_handlers_come_back(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(run.Interrupted) as err, run.interrupts_as_exceptions():
        os.kill(os.getpid(), sig)
        time.sleep(5)
    assert err.value.signum == sig and isinstance(err.value, KeyboardInterrupt)
    assert signal.getsignal(sig) is before


def test_what_an_interrupt_keeps_is_said_in_one_line(tmp_path: Path) -> None:
    cfg = make_tiny(tmp_path)
    assert run.kept(cfg) == "no checkpoint was written yet, so training starts over"
    train.fit(make_tiny(tmp_path, epochs=3), id_splits(cfg), CPU, progress=False)
    assert run.kept(cfg) == f"kept the checkpoints up to epoch 3 of 3 in {train.checkpoint_dir(cfg)}"

