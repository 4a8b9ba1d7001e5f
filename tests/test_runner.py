"""Tests for helpers.run, the papermill runner: bad input fails early with one line, a failing notebook is
named and kept, papermill alone refuses unknown parameters, and a seed trains the same in the runner's kernels
as in this process."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import checkpoint as ckpt
from helpers import data, run
from helpers.config import REPO_ROOT, make_config

from .conftest import PYTHON, one_thread, state_dicts_equal, subprocess_env

TINY = ["-p", "num_classes", "5", "-p", "per_class", "8", "-p", "width", "4", "-p", "epochs", "2",
        "-p", "checkpoint_every", "1", "-p", "batch_size", "8"]


def _runner_args(tmp_path: Path, *args: str, out: str = "out") -> list[str]:
    return ["--profile", "smoke", *TINY, "-p", "artifacts", str(tmp_path / "artifacts"), *args,
            "--out", str(tmp_path / out)]


def _start_runner(tmp_path: Path, *args: str, out: str = "out") -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "helpers.run", *_runner_args(tmp_path, *args, out=out)], cwd=REPO_ROOT,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runner(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    proc = _start_runner(tmp_path, *args)
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------- bad input: one line, before any notebook
@pytest.mark.parametrize("args, message", [
    (["--profile", "gpu"], "error: unknown profile 'gpu'; choose one of smoke, cpu, full, auto."),
    (["-p", "epoch", "3"], "error: unknown parameter 'epoch'; did you mean 'epochs'? valid names: "),
    (["-p", "epochs", "abc"], "error: parameter 'epochs' must be int, got str 'abc'; e.g. -p epochs "),
])
def test_bad_input_fails_in_a_subprocess_with_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = _runner(tmp_path, *args, "--only", "01", "--no-book")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr   # exactly one line
    assert result.stderr.startswith(message)
    assert not (tmp_path / "out").exists()                             # failed before any notebook ran


@pytest.mark.parametrize("args, code, message", [
    (["-p", "augment", "3"], 2, "error: parameter 'augment' must be bool, got int 3; e.g. -p augment False."),
    (["-p", "lr", "fast"], 2, "error: parameter 'lr' must be float, got str 'fast'"),
    (["-p", "epochs", "0"], 2, "error: parameter 'epochs' must be positive, got 0."),
    (["-p", "val_fraction", "0.7"], 2, "error: val_fraction must lie in [0, 0.5), got 0.7."),
    (["-p", "profile", "cpu"], 2, "error: the profile is not a parameter; use --profile cpu instead of -p profile."),
    (["--only", "99"], 1, "error: --only ['99'] matches no notebook; choose from 01_training, "),
])
def test_bad_input_messages(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], code: int,
                            message: str) -> None:
    only = [] if "--only" in args else ["--only", "01"]
    assert run.main(_runner_args(tmp_path, *args, *only, "--no-book")) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and err.startswith(message), err


def test_missing_cuda_fails_before_any_notebook(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert run.main(_runner_args(tmp_path, "-p", "device", "cuda", "--only", "01", "--no-book")) == 2
    assert capsys.readouterr().err == ("error: device 'cuda' asked for but CUDA is not available; "
                                       "use -p device cpu.\n")


def test_unwritable_artifacts_folder_fails_before_any_notebook(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where a folder should be")
    args = _runner_args(tmp_path, "-p", "artifacts", str(blocker / "artifacts"), "--only", "01", "--no-book")
    assert run.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write to the artifacts folder {blocker / 'artifacts'}/smoke-synthetic-s0-")
    assert err.strip().endswith("pass -p artifacts PATH with a writable PATH.") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    got = run.absolute_paths({"artifacts": "arts", "data_root": "~/d", "id_dataset": "imagefolder:pets", "seed": 1})
    assert got == {"artifacts": str(tmp_path / "arts"), "data_root": str(Path.home() / "d"),
                   "id_dataset": f"imagefolder:{tmp_path / 'pets'}", "seed": 1}
    assert run.absolute_paths({"id_dataset": "synthetic", "artifacts": ""}) == {"id_dataset": "synthetic",
                                                                               "artifacts": ""}


def test_overrides_are_read_as_yaml() -> None:
    got = run.parse_overrides([["epochs", "3"], ["augment", "true"], ["lr", "0.05"], ["id_dataset", "cifar10"],
                               ["ood_datasets", "[svhn, dtd]"]])
    assert got == {"epochs": 3, "augment": True, "lr": 0.05, "id_dataset": "cifar10", "ood_datasets": ["svhn", "dtd"]}


# ------------------------------------------------------------------------------------- notebooks executed
@pytest.mark.slow
def test_failing_notebook_is_named_and_kept(tmp_path: Path) -> None:
    result = _runner(tmp_path, "-p", "id_dataset", "imagefolder:/nonexistent", "--only", "01", "--no-book")
    assert result.returncode == 1
    kept = tmp_path / "out" / "executed" / "01_training.ipynb"
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: notebook 01_training.ipynb failed in cell ")
    assert "(DataNotFoundError: image folder '/nonexistent' does not exist" in errors[0]
    assert errors[0].endswith(f"the partly executed notebook is kept at {kept}")
    nb = json.loads(kept.read_text())
    outputs = [o for cell in nb["cells"] if cell["cell_type"] == "code" for o in cell.get("outputs", [])]
    assert any(o.get("ename") == "DataNotFoundError" for o in outputs)


@pytest.mark.slow
def test_papermill_alone_rejects_an_unknown_parameter(tmp_path: Path) -> None:
    out = tmp_path / "out.ipynb"
    cmd = [PYTHON, "-m", "papermill", str(REPO_ROOT / "notebooks" / "01_training.ipynb"), str(out), "-p", "profile",
           "smoke", "-p", "epoch", "3", "-p", "artifacts", str(tmp_path / "artifacts"), "--no-progress-bar"]
    result = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "unknown parameter 'epoch'; did you mean 'epochs'?" in result.stderr + result.stdout
    assert not (tmp_path / "artifacts").exists()                       # stopped in the setup cell


# ------------------------------------------------------------------------------------ several seeds
@pytest.mark.slow
def test_several_seeds_give_mean_and_std_in_the_results(tmp_path: Path) -> None:
    """The series runs once per seed (here notebook 01 alone), the two seeds side by side on the CPU
    (``--jobs 2``); the Results chapter then reports mean ± std across the seeds (rendered from hand-made metrics
    in test_results.py). The runner's kernels train bit for bit as this process does with the same seed and one
    thread (determinism across processes), and the other seed trains differently."""
    from helpers import config, data, results, train

    result = _runner(tmp_path, "--seeds", "0", "1", "--only", "01", "--no-book", "--jobs", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "seeds [0, 1] in parallel on CPU share 0, CPU share 1" in output
    assert "[seed 1, CPU share 1] " in output and "[seed 0, CPU share 0] " in output
    assert (tmp_path / "out" / "executed" / "01_training.ipynb").exists()
    assert re.search(r"\[seed 0, CPU share 0\] training: +100%.*loss=", output), output[-2000:]   # live progress
    for noise in ("IProgress", "without encryption", "Passed unknown parameter", "Executing:"):
        assert noise not in output, noise
    overrides = dict(num_classes=5, per_class=8, width=4, epochs=2, checkpoint_every=1, batch_size=8,
                     artifacts=str(tmp_path / "artifacts"))
    cfgs = [config.make_config("smoke", seed=s, **overrides) for s in (0, 1)]
    assert [c.run_dir().name[:19] for c in cfgs] == ["smoke-synthetic-s0-", "smoke-synthetic-s1-"]
    assert [json.loads((c.run_dir() / "run.json").read_text())["machine"]["threads"] for c in cfgs] == [1, 1]
    here = dataclasses.replace(cfgs[0], artifacts=str(tmp_path / "here"))
    with one_thread():                                   # as the kernels have: CPU sums depend on the thread count
        model, history = train.fit(here, data.id_splits(cfgs[0]), torch.device("cpu"), progress=False)
    kernels = [ckpt.load(ckpt.list_checkpoints(c.run_dir() / "checkpoints")[2]) for c in cfgs]
    assert kernels[0]["history"] == history and kernels[1]["history"] != history      # every float, exactly
    assert state_dicts_equal(kernels[0]["model"], model.state_dict())
    md = results.results_markdown(cfgs)
    assert "seeds 0, 1" in md
    training = next(line for line in md.splitlines() if line.startswith("**Training.**"))
    assert training.count("±") == 2, training                  # train and test accuracy over the two seeds


def test_run_json_times_each_notebook_by_the_execution_that_did_its_work(tmp_path: Path) -> None:
    cfg = make_config("smoke", artifacts=str(tmp_path))
    def seconds() -> dict[str, float]:
        return json.loads((cfg.run_dir() / "run.json").read_text())["seconds"]

    run.write_run_json(cfg, {"01_training": 50.0, "02_ood_scores": 9.0}, complete=False)    # cut short in 03
    run.write_run_json(cfg, {"01_training": 2.0, "02_ood_scores": 1.0, "03_neural_collapse": 7.0})   # resumed
    assert seconds() == {"01_training": 50.0, "02_ood_scores": 9.0, "03_neural_collapse": 7.0}
    assert json.loads((cfg.run_dir() / "run.json").read_text())["data"] == data.sources(cfg)   # the sets' sources
    run.write_run_json(cfg, {"01_training": 3.0, "02_ood_scores": 8.0}, reused={"01_training"})   # run again
    assert seconds() == {"01_training": 50.0, "02_ood_scores": 8.0, "03_neural_collapse": 7.0}
    run.write_run_json(cfg, {"01_training": 4.0})                                              # it trained again
    assert seconds()["01_training"] == 4.0
    other = dataclasses.replace(cfg, ood_subset=7)             # same run folder (training fields), other configuration
    run.write_run_json(other, {"01_training": 5.0}, complete=False)
    run.write_run_json(cfg, {"01_training": 6.0}, reused={"01_training"})
    assert seconds()["01_training"] == 6.0


def test_a_series_cut_short_after_reloading_finished_training_keeps_the_training_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    cfg = make_config("smoke", artifacts=str(tmp_path))
    run.write_run_json(cfg, {"01_training": 50.0})                    # the series that trained
    monkeypatch.setattr(run, "_last_epoch", lambda c: c.epochs)         # every epoch is checkpointed

    def execute(nb: str, executed: Path, parameters: dict) -> float:
        if nb == run.NOTEBOOKS[0]:
            return 2.0                                                  # reloading the checkpoints
        raise run.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(run, "execute", execute)
    with pytest.raises(run.Interrupted):
        run._run_series(cfg, list(run.NOTEBOOKS), tmp_path / "executed", {})
    info = json.loads((cfg.run_dir() / "run.json").read_text())
    assert (info["seconds"], info["complete"]) == ({"01_training": 50.0}, False)
