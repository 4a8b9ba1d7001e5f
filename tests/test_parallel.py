"""Tests for helpers.parallel: which seed goes to which GPU, what each child sees, and how failures are reported.

The GPU count is given explicitly (no GPU here) and the children are tiny Python commands that report their
environment or wait for each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from helpers import parallel
from helpers.parallel import Assignment


def test_visible_gpus_come_from_the_device_count_or_the_parents_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parallel.visible_gpus({}, count=3) == ["0", "1", "2"]
    assert parallel.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}, count=2) == ["2", "5"]
    assert parallel.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}, count=2) == ["GPU-aa", "GPU-bb"]
    assert parallel.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, count=0) == []
    assert parallel.visible_gpus({}, count=0) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert parallel.visible_gpus({}) == ["0", "1", "2", "3"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parallel.visible_gpus({}) == []


def test_seeds_go_round_robin_over_the_gpus() -> None:
    assert parallel.plan([0, 1, 2], ["0", "1", "2"]) == [Assignment(0, "0"), Assignment(1, "1"), Assignment(2, "2")]
    assert parallel.plan([7, 3, 5], ["4", "6"]) == [Assignment(7, "4"), Assignment(3, "6"), Assignment(5, "4")]
    assert [a.gpu for a in parallel.plan(list(range(5)), ["0", "1"])] == ["0", "1", "0", "1", "0"]
    with pytest.raises(ValueError, match="repeats a seed"):
        parallel.plan([1, 1], ["0", "1"])
    with pytest.raises(ValueError, match="needs at least one GPU"):
        parallel.plan([1, 2], [])


def test_parallel_only_with_two_seeds_and_two_gpus_and_no_gpu_asked_for() -> None:
    assert parallel.in_parallel([0, 1, 2], ["0", "1"])
    assert parallel.in_parallel([0, 1], ["0", "1"], "cuda")
    assert not parallel.in_parallel([0, 1, 2], ["0"])                   # one GPU: in sequence
    assert not parallel.in_parallel([0, 1, 2], [])                      # CPU only: in sequence
    assert not parallel.in_parallel([0], ["0", "1"])
    assert not parallel.in_parallel([0, 1], ["0", "1"], "cuda:1")       # that GPU for every seed
    assert not parallel.in_parallel([0, 1], ["0", "1"], "cpu")


def test_a_child_sees_its_gpu_and_a_share_of_the_threads() -> None:
    env = parallel.child_env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"}, "1", parallel=2, cpus=8)
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4",
                   "PYTHONUNBUFFERED": "1"}
    assert parallel.child_env({"OMP_NUM_THREADS": "2"}, "0", 3, cpus=2)["OMP_NUM_THREADS"] == "2"
    assert parallel.child_env({}, "0", 3, cpus=2)["MKL_NUM_THREADS"] == "1"


REPORT = "import os, sys; print('seed', sys.argv[1], 'sees', os.environ['CUDA_VISIBLE_DEVICES'])"


def test_each_child_runs_with_its_own_gpu_and_its_output_is_prefixed() -> None:
    lines: list[str] = []
    jobs = parallel.plan([0, 1, 2], ["3", "5"])
    codes = parallel.run_children(jobs, lambda s: [sys.executable, "-c", REPORT, str(s)], {}, lines.append)
    assert codes == {0: 0, 1: 0, 2: 0}
    assert sorted(lines) == ["[seed 0, GPU 3] seed 0 sees 3", "[seed 1, GPU 5] seed 1 sees 5",
                             "[seed 2, GPU 3] seed 2 sees 3"]


# Each child marks itself as running, waits (at most `wait` s, else exit 3) until `want` children have started,
# fails (exit 4) if more than `most` run at once, and unmarks itself before it exits.
MEET = """
import pathlib, sys, time
folder, seed, want, most, wait = pathlib.Path(sys.argv[1]), sys.argv[2], *map(float, sys.argv[3:])
mine = folder / f"running-{seed}"
mine.touch()
(folder / f"started-{seed}").touch()
deadline = time.monotonic() + wait
while len(list(folder.glob("started-*"))) < want:
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.02)
now = len(list(folder.glob("running-*")))
mine.unlink()
sys.exit(4 if now > most else 0)
"""


def _meet(folder: Path, want: int, most: int, wait: float = 60):
    return lambda s: [sys.executable, "-c", MEET, str(folder), str(s), str(want), str(most), str(wait)]


def test_the_gpus_run_side_by_side(tmp_path: Path) -> None:
    jobs = parallel.plan([0, 1], ["0", "1"])
    assert parallel.run_children(jobs, _meet(tmp_path, 2, 2), {}, lambda line: None) == {0: 0, 1: 0}


def test_one_gpu_runs_its_seeds_one_after_another(tmp_path: Path) -> None:
    # 4 seeds on 2 GPUs: never more than 2 at once; the last two can only start once the first two finished.
    jobs = parallel.plan([0, 1, 2, 3], ["0", "1"])
    assert parallel.run_children(jobs, _meet(tmp_path, 2, 2), {}, lambda line: None) == {0: 0, 1: 0, 2: 0, 3: 0}
    alone = tmp_path / "alone"
    alone.mkdir()
    with pytest.raises(parallel.SeedsFailedError, match=r"^seed 0 \(GPU 0\) exited with 3: no output; seeds 1"):
        parallel.run_children(parallel.plan([0, 1], ["0"]), _meet(alone, 2, 2, wait=1), {}, lambda line: None)


FAIL = ("import sys; print('working on', sys.argv[1]); print('Boom: no data', file=sys.stderr); "
        "sys.exit(int(sys.argv[1]))")


def test_failures_are_reported_in_one_line_after_all_seeds_ended() -> None:
    jobs = parallel.plan([0, 2, 5], ["0", "1"])
    with pytest.raises(parallel.SeedsFailedError) as err:
        parallel.run_children(jobs, lambda s: [sys.executable, "-c", FAIL, str(s)], {}, lambda line: None)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == ("seed 2 (GPU 1) exited with 2: Boom: no data; seed 5 (GPU 0) exited with 5: Boom: no data; "
                   "seeds 0 finished and are kept; rerun the failed seeds with --seeds (finished work is reused).")


def test_cpu_slots_hide_the_gpus_and_share_the_cores() -> None:
    assert parallel.cpu_slots(2) == ["cpu:0", "cpu:1"]
    with pytest.raises(ValueError, match="--jobs must be at least 1, got 0"):
        parallel.cpu_slots(0)
    env = parallel.child_env({"CUDA_VISIBLE_DEVICES": "0,1"}, "cpu:1", parallel=2, cpus=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
    assert [parallel.label(s) for s in ("cpu:1", "3")] == ["CPU share 1", "GPU 3"]


def test_the_runner_uses_cpu_slots_only_when_asked_and_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import config, run

    cfg = config.make_config("smoke", device="cpu")
    monkeypatch.setattr(parallel, "visible_gpus", lambda: [])
    assert run._slots(cfg, [0, 1, 2], "cpu", jobs=2) == ["cpu:0", "cpu:1"]
    assert run._slots(cfg, [0, 1], "cpu", jobs=4) == ["cpu:0", "cpu:1"]         # no more slots than seeds
    assert run._slots(cfg, [0, 1], "cpu", jobs=1) == []                         # in sequence
    assert run._slots(cfg, [0], "cpu", jobs=2) == []
    monkeypatch.setattr(parallel, "visible_gpus", lambda: ["0", "1"])
    assert run._slots(cfg, [0, 1], "auto", jobs=1) == ["0", "1"]                # two GPUs: a seed each
    monkeypatch.setattr(run, "resolve_device", lambda cfg: torch.device("cuda"))
    with pytest.raises(ValueError, match=r"--jobs 2 runs seeds side by side on the CPU, but this run uses cuda"):
        run._slots(cfg, [0, 1], "auto", jobs=2)
