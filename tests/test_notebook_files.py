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
