"""Tests for helpers.checkpoint: atomic writes, damaged and foreign files, mismatches, unwritable folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import checkpoint as ckpt
from helpers import report, train
from helpers.data import id_splits

from .conftest import make_tiny


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def trained(tiny_cfg):
    """A finished tiny run (3 epochs, a checkpoint after each)."""
    train.fit(tiny_cfg, id_splits(tiny_cfg), torch.device("cpu"), progress=False)
    return tiny_cfg


def test_save_atomic_round_trip_and_no_temporary_file(tmp_path: Path) -> None:
    path = ckpt.save_atomic({"epoch": 4, "x": torch.arange(3)}, tmp_path / "sub" / "epoch-0004.pt")
    blob = ckpt.load(path)
    assert blob["format"] == ckpt.FORMAT and blob["epoch"] == 4 and torch.equal(blob["x"], torch.arange(3))
    assert "digest" not in blob                                        # no weights, nothing to digest
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["epoch-0004.pt"]


def test_the_weights_digest_is_stored_and_depends_on_every_weight(tmp_path: Path) -> None:
    state = {"b": torch.zeros(3, dtype=torch.bfloat16), "a": torch.arange(4.0), "n": torch.tensor(7)}
    path = ckpt.save_atomic({"epoch": 1, "model": state}, tmp_path / "epoch-0001.pt")
    assert ckpt.load(path)["digest"] == ckpt.weights_digest(state) == ckpt.digest(path)
    assert ckpt.weights_digest(dict(reversed(state.items()))) == ckpt.weights_digest(state)   # order-free
    for name in state:
        other = {**state, name: state[name].clone()}
        other[name].view(-1)[0] += 1
        assert ckpt.weights_digest(other) != ckpt.weights_digest(state), name
    assert ckpt.weights_digest({**state, "a": state["a"].double()}) != ckpt.weights_digest(state)  # dtype counts


def test_the_artifacts_names_are_the_ones_of_helpers_artifacts() -> None:
    from helpers import artifacts

    assert ckpt.ArtifactsError is artifacts.ArtifactsError
    assert ckpt.ensure_writable is artifacts.ensure_writable


def test_truncated_checkpoint_is_reported_and_left_alone(trained) -> None:
    folder = train.checkpoint_dir(trained)
    path = folder / "epoch-0002.pt"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    before = _snapshot(folder)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load(path)
    message = str(err.value)
    assert "\n" not in message and f"checkpoint {path} is corrupt or truncated" in message and "delete it" in message
    assert _snapshot(folder) == before


NOISE = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("content", [b"", b"hello world, not a checkpoint", NOISE, b"PK\x03\x04" + bytes(64)])
def test_garbage_is_a_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "epoch-0001.pt"
    path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=r"is corrupt or truncated"):
        ckpt.load(path)
    assert path.read_bytes() == content


@pytest.mark.parametrize("obj", [{"epoch": 1, "model": {}}, torch.zeros(3), [1, 2], {"format": "other-v0"}])
def test_foreign_torch_file_is_a_checkpoint_error(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "weights.pt"
    torch.save(obj, path)
    with pytest.raises(ckpt.CheckpointError, match=r"weights.pt is not a checkpoint of this project; move it out"):
        ckpt.load(path)


def test_mismatched_width_and_classes_name_both(trained) -> None:
    path = train.checkpoint_dir(trained) / "epoch-0003.pt"
    blob = ckpt.load(path)
    ckpt.check_matches(blob, path, num_classes=5, width=4)             # its own configuration passes
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.check_matches(blob, path, num_classes=7, width=8)
    message = str(err.value)
    assert "has width 4 and 5 classes" in message and "needs width 8 and 7 classes" in message
    assert "-p artifacts" in message
    with pytest.raises(ckpt.CheckpointError, match=r"needs width 4 and 6 classes"):
        train.load_model(path, trained, 6, torch.device("cpu"))


def test_resuming_refuses_a_checkpoint_of_another_width(tmp_path: Path) -> None:
    """A checkpoint of another width planted in the run folder is reported, not loaded or overwritten."""
    cfg = make_tiny(tmp_path)
    other = make_tiny(tmp_path / "other", width=8, epochs=1)
    train.fit(other, id_splits(other), torch.device("cpu"), progress=False)
    folder = train.checkpoint_dir(cfg)
    folder.mkdir(parents=True)
    (folder / "epoch-0001.pt").write_bytes((train.checkpoint_dir(other) / "epoch-0001.pt").read_bytes())
    before = _snapshot(folder)
    with pytest.raises(ckpt.CheckpointError, match=r"has width 8 and 5 classes, but this run needs width 4"):
        train.fit(cfg, id_splits(cfg), torch.device("cpu"), progress=False)
    assert _snapshot(folder) == before


def test_load_or_train_reports_a_corrupt_latest_checkpoint(trained) -> None:
    folder = train.checkpoint_dir(trained)
    latest = folder / "epoch-0003.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    before = _snapshot(folder)
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint {latest} is corrupt or truncated"):
        train.load_or_train(trained, id_splits(trained), torch.device("cpu"), progress=False)
    assert _snapshot(folder) == before                                 # nothing retrained over it


def test_unwritable_artifacts_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where a folder should be")   # fails for root too, unlike chmod
    cfg = make_tiny(tmp_path, artifacts=str(blocker / "artifacts"))
    with pytest.raises(ckpt.ArtifactsError) as err:
        train.fit(cfg, id_splits(cfg), torch.device("cpu"), progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write to the artifacts folder {blocker / 'artifacts'}")
    assert "pass -p artifacts PATH" in message
    assert blocker.read_text().startswith("a regular file")
    for save in (lambda: report.save_metrics(cfg, "training", {"a": 1}), lambda: report.save_figure(cfg, None, "x")):
        with pytest.raises(ckpt.ArtifactsError, match=r"cannot write to the artifacts folder .*pass -p artifacts"):
            save()


def test_ensure_writable_creates_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    folder = ckpt.ensure_writable(tmp_path / "a" / "b")
    assert folder.is_dir() and not list(folder.iterdir())
