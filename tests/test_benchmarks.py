"""The benchmark runner's bookkeeping: goal lines parsed, the README table replaced between its markers only."""

from __future__ import annotations

import sys

import pytest

from helpers.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import run_all  # noqa: E402

OUTPUT = """== something ==
goal KNN s per 10,000 queries <= 2 s: 2.639 s -> MISSED
some table line
goal max |AUROC float32 - float64| <= 1e-06: 0 -> met
result training step, share of the 2-thread float32 peak: 62 % (96 of 155 GFLOP/s)
W1202 22:02:02.370000 11491 cpp_extension.py:183] No CUDA runtime is found
"""


def test_goal_lines_become_rows_and_a_script_without_goals_says_why() -> None:
    goals = run_all.parse_goals(OUTPUT)
    assert [(g["name"], g["op"], g["target"], g["value"], g["status"]) for g in goals] == [
        ("KNN s per 10,000 queries", "<=", "2 s", "2.639 s", "MISSED"),
        ("max |AUROC float32 - float64|", "<=", "1e-06", "0", "met")]
    table = run_all.goal_table({"scores": dict(goals=goals, output=OUTPUT, code=0),
                                "gpu": dict(goals=[], output="no CUDA device here; nothing to measure.\n", code=0)})
    lines = table.splitlines()
    assert lines[2] == "| bench_scores.py | KNN s per 10,000 queries | <= 2 s | 2.639 s | **missed** |"
    assert lines[3] == "| bench_scores.py | max \\|AUROC float32 - float64\\| | <= 1e-06 | 0 | met |"   # pipes escaped
    assert lines[4] == ("| bench_scores.py | training step, share of the 2-thread float32 peak | (no goal) | "
                        "62 % (96 of 155 GFLOP/s) | |")
    assert lines[5] == "| bench_gpu.py | (no goal; exit 0) | | no CUDA device here; nothing to measure. | |"


def test_only_the_text_between_the_markers_is_replaced() -> None:
    text = f"intro\n{run_all.BEGIN}\nold table\n{run_all.END}\nrest\n"
    assert run_all.replace_section(text, "new") == f"intro\n{run_all.BEGIN}\nnew\n{run_all.END}\nrest\n"
    with pytest.raises(SystemExit, match="markers"):
        run_all.replace_section("no markers here", "new")
    assert run_all.BEGIN in (REPO_ROOT / "benchmarks" / "README.md").read_text()


def test_the_tpt_grid_reads_settings_and_the_held_onset() -> None:
    import tpt_grid

    assert tpt_grid.settings("augment=true plain_epochs=12") == {"augment": True, "plain_epochs": 12}
    assert tpt_grid.settings("") == {}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        tpt_grid.settings("augment true")
    accs = [0.5, 0.991, 0.98, 0.992, 0.995, 0.999]                 # reaches 99 % at 2, holds it from 4
    history = [dict(epoch=e, train_acc=a) for e, a in enumerate(accs, 1)]
    assert tpt_grid.held_onset(history) == 4
    assert tpt_grid.held_onset(history[:3]) is None                  # lost again at the last epoch
    assert tpt_grid.held_onset(history[:1]) is None
