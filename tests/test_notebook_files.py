"""The committed notebooks: no outputs, a papermill parameters cell, and a Colab cell that installs the
project from the one repository address kept in ``_config.yml``."""

from __future__ import annotations

import json

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
    assert f'_REPO = "{REPOSITORY}"' in first
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
    assert "plan: width 4, 3 epochs, batch 8" in out[1] and len(out) == 2
