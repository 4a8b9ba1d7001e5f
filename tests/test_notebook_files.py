"""The committed notebooks: no outputs, a papermill parameters cell, a Colab cell that installs the project
from the one repository address kept in ``_config.yml``; figures shown under any backend, plumbing tagged out of
the book, implement-then-use cells, and markdown that Colab and Jupyter render (issue 14)."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from helpers.config import REPO_ROOT
from helpers.run import NOTEBOOKS

REPOSITORY = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["repository"]["url"]


def cells(name: str) -> list[dict]:
    return json.loads((REPO_ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name: str) -> None:
    code = [c for c in cells(name) if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_sets_the_profile(name: str) -> None:
    tagged = [c for c in cells(name) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert 'profile = "auto"' in "".join(tagged[0]["source"])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_code_cell_installs_from_the_configured_repository(name: str) -> None:
    first = "".join(next(c for c in cells(name) if c["cell_type"] == "code")["source"])
    assert '"google.colab" in sys.modules' in first            # does nothing outside Colab
    assert f'"{REPOSITORY}"' in first and "_REPO = " in first
    assert first == "".join(next(c for c in cells(NOTEBOOKS[0]) if c["cell_type"] == "code")["source"])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_preamble_is_one_setup_call_and_last_is_an_epoch(name: str) -> None:
    code = "\n".join("".join(c["source"]) for c in cells(name) if c["cell_type"] == "code")
    assert code.count("cfg, splits, device = helpers.setup(globals())") == 1
    assert "from_notebook" not in code and "resolve_device" not in code and "id_splits" not in code
    lasts = [line for line in code.splitlines() if line.startswith("last = ")]
    assert all(line.startswith("last = max(checkpoints)") for line in lasts)   # an epoch; the path is checkpoints[last]
    assert "trajectory." not in code and "evaluation." not in code               # modules that are gone


def test_setup_returns_config_splits_device_and_prints_the_plan(tmp_path, capsys) -> None:
    import helpers

    from .conftest import TINY

    ns = {"profile": "smoke", **TINY, "artifacts": str(tmp_path / "a"), "data_root": str(tmp_path / "d")}
    cfg, splits, device = helpers.setup(ns)
    assert (cfg.num_classes, cfg.width, device.type) == (5, 4, "cpu") and splits.num_classes == 5
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("profile smoke (asked for explicitly) on cpu; artifacts in ")
    assert out[1].startswith(f"ID set synthetic: 5 classes, {len(splits.train)} train / {len(splits.val)} val / ")
    assert "width 4, 3 epochs, batch 8" in out[1] and len(out) == 3 and "training 3 epochs" in out[2]


# ------------------------------------------------------------------------------------------ issue 14
FIGURE_CALL = re.compile(r"\bplots\.(?!show\b|label\b|LABELS\b|class_means_gif\b)[a-z_]+\(")


def code_cells(name: str) -> list[str]:
    return ["".join(c["source"]) for c in cells(name) if c["cell_type"] == "code"]


def plotting_cells(name: str) -> int:
    """Code cells that put a figure into the notebook: ``plots.show(...)`` or an ``Image`` display (the GIF)."""
    return sum("plots.show(" in s or "display(Image(" in s for s in code_cells(name))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_is_shown_whatever_the_backend(name: str) -> None:
    code = code_cells(name)
    assert not any("plt.show()" in s for s in code), f"{name}: plt.show() shows nothing under MPLBACKEND=Agg"
    for s in code:
        if FIGURE_CALL.search(s):
            assert "plots.show(" in s, f"{name}: a cell makes a figure but does not show it:\n{s[:200]}"
    assert plotting_cells(name) >= 2


def test_plots_show_leaves_a_png_in_a_notebook_run_under_agg(tmp_path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nfrom helpers import plots\nfig, ax = plt.subplots()\nax.plot([0, 1])\n"
        "plots.show(fig)\nprint(len(plt.get_fignums()))")])
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO_ROOT)}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    outputs = nb.cells[0].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs), outputs
    assert any(o.get("text", "").strip() == "0" for o in outputs)      # closed: inline backends do not show it twice


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_plumbing_is_tagged_out_of_the_book(name: str) -> None:
    code = [c for c in cells(name) if c["cell_type"] == "code"]
    assert "remove-cell" in tags(code[0])                                      # the Colab cell
    assert all("remove-cell" in tags(c) for c in code if "parameters" in tags(c))
    for c in code:
        s = "".join(c["source"])
        if s.startswith("# NBVAL_CHECK_OUTPUT") or "report.save_metrics(" in s:
            hidden = {"remove-cell", "remove-input", "hide-input"} & set(tags(c))
            assert hidden, f"{name}: untagged plumbing:\n{s[:120]}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_markdown_renders_outside_the_book_and_exercises_are_labelled(name: str) -> None:
    text = "\n".join("".join(c["source"]) for c in cells(name) if c["cell_type"] == "markdown")
    assert "{exercise}" not in text and "{solution}" not in text, f"{name}: MyST exercise blocks are raw text in Colab"
    exercises = re.findall(r"\*\*Exercise \d\.\d: [^*]+\*\* \((★[★☆]{2}) [a-z]+ · about (\d+) min", text)
    assert len(exercises) >= 3, f"{name}: every exercise needs a difficulty and a time label"
    assert text.count("<details><summary>Solution</summary>") == text.count("**Exercise ") == len(exercises)
    assert text.count("<details>") == text.count("</details>")
    assert "twice as many epochs (`-p epochs" not in text                    # no hard-coded profile value


def test_three_implement_and_check_exercises() -> None:
    text = "\n".join("".join(c["source"]) for n in NOTEBOOKS for c in cells(n) if c["cell_type"] == "markdown")
    assert 2 <= text.count("· implement and check)") <= 4


def test_notebook_02_implements_the_six_scores_and_checks_them_against_the_library() -> None:
    code = "\n".join(code_cells("02_ood_scores"))
    for name in ("msp", "maxlogit", "energy", "mahalanobis", "vim", "neco"):
        assert f'check("{name}", ' in code, f"notebook 02 does not check its own {name} against helpers.ood"
    assert "np.testing.assert_allclose" in code
    assert code.index('check("neco", ') < code.index("protocol.detect(")       # implement, then use


def test_notebook_03_implements_nc1_to_nc4_and_checks_them_against_the_library() -> None:
    code = "\n".join(code_cells("03_neural_collapse"))
    for key in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4"):
        assert f'"{key}":' in code
    assert "collapse.nc_metrics(" in code and "np.testing.assert_allclose(value, lib[key]" in code
    assert code.index("collapse.nc_metrics(") < code.index("sweep.collapse_over_training(")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_title_names_the_notebook_as_the_text_does(name: str) -> None:
    first = "".join(cells(name)[0]["source"])
    assert first.startswith(f"# Notebook {int(name[:2])}: ")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_closing_discussion_reads_the_run(name: str) -> None:
    code = code_cells(name)
    assert any(s.lstrip().startswith(("gap = ", "avg = ", "nc1 = table", "for name in ood_sets", "reached = "))
               and "print(" in s for s in code), f"{name}: no generated reading of the run's numbers"


def test_figure_titles_carry_no_equation_labels() -> None:
    source = (REPO_ROOT / "helpers" / "plots.py").read_text()
    assert not re.search(r"\(eq-[a-z0-9-]+", source)
