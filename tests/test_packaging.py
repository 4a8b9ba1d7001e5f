"""The package as a reader installs it: one list of dependencies in pyproject.toml, and ``pip install .`` in a clean
virtual environment gives a working ``helpers``."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers.config import REPO_ROOT

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PROJECT["optional-dependencies"].items()}


def declared(reqs: list[Requirement]) -> set[str]:
    return {md.Distribution.from_name(r.name).metadata["Name"].lower() for r in reqs}


def third_party_imports(top_level_only: bool) -> set[str]:
    """Top-level module names that helpers/*.py import (at module level only, or anywhere)."""
    names = set()
    for path in (REPO_ROOT / "helpers").glob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "helpers"}


def copy_tree(dest: Path) -> Path:
    """This working tree's files (tracked and new, as a fresh clone would hold them after a commit) in ``dest``."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in files:
        if (REPO_ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, dest / rel)
    return dest


def distributions_of(modules: set[str]) -> dict[str, set[str]]:
    owners = md.packages_distributions()
    return {m: {d.lower() for d in owners.get(m, [])} for m in modules}


def test_requirements_txt_installs_the_project_with_its_extras() -> None:
    lines = [ln.strip() for ln in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln and not ln.startswith("#")] == ["-e .[book,test]"]
    assert set(EXTRAS) == {"book", "test"}


def test_every_import_of_helpers_is_declared() -> None:
    runtime = declared(RUNTIME)
    everything = runtime | set().union(*(declared(r) for r in EXTRAS.values()))
    module_level = distributions_of(third_party_imports(top_level_only=True))
    missing = {m: d for m, d in module_level.items() if not d & runtime}
    assert not missing, f"helpers imports {sorted(missing)} at module level without a runtime dependency"
    anywhere = distributions_of(third_party_imports(top_level_only=False))
    missing = {m: d for m, d in anywhere.items() if not d & everything and m != "google"}   # google.colab: Colab's
    assert not missing, f"helpers imports {sorted(missing)} without declaring it in pyproject.toml"


def test_bounds_leave_colabs_torch_alone_and_keep_jupyter_book_1() -> None:
    spec = {r.name: r.specifier for r in RUNTIME + [r for reqs in EXTRAS.values() for r in reqs]}
    assert str(spec["torch"]) == ">=2.4"
    assert all(v in spec["torch"] for v in ("2.4.0", "2.8.0+cu126", "2.14.1"))
    assert "2.0.0" not in spec["jupyter-book"]
    assert "1.0.4" in spec["jupyter-book"] and "0.6.5" not in spec["jupyter-book"]


def test_the_environment_satisfies_every_declared_requirement() -> None:
    """The declared list resolves: this environment was installed from it (make setup) and satisfies it."""
    for req in RUNTIME + [r for reqs in EXTRAS.values() for r in reqs]:
        version = md.version(req.name)
        assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} does not satisfy {req}"


CHECK = """
import importlib, json, pkgutil, sys
from pathlib import Path
import helpers
from helpers import checkpoint, config
modules = [m.name for m in pkgutil.iter_modules(helpers.__path__)]
for name in modules:
    importlib.import_module("helpers." + name)
cfg = config.make_config("smoke", epochs=40, checkpoint_every=5)
slow = lambda: sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "scipy"})
unloaded = slow()                                    # every kernel and runner imports helpers; each takes ~1 s
helpers.metrics.ood_metrics([1.0, 2.0], [0.0])
print(json.dumps(dict(file=helpers.__file__, modules=modules, epochs=checkpoint.checkpoint_epochs(40, 5),
                      key=cfg.key(), run_dir=str(cfg.run_dir()), slow_imports=[unloaded, slow()])))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pip_install_in_a_clean_venv_gives_a_working_helpers(tmp_path: Path) -> None:
    """``pip install --no-deps .`` into a venv without site packages (pip builds the wheel in its isolated build
    environment, with setuptools from the registry; minutes on a loaded machine); the dependencies come from
    this environment's site-packages on PYTHONPATH, which holds no ``helpers``
    (the project is installed there in editable mode, through a .pth that PYTHONPATH does not run)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    build = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                            str(copy_tree(tmp_path / "clone"))], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"], "OODNC_ARTIFACTS": str(tmp_path / "a"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(venv), f"helpers came from {out['file']}, not the clean venv"
    shipped = {p.stem for p in (REPO_ROOT / "helpers").glob("*.py") if p.stem != "__init__"}
    assert set(out["modules"]) == shipped
    assert out["epochs"] == [1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40]
    assert out["run_dir"].startswith(str(tmp_path / "a"))
    assert out["slow_imports"] == [[], ["scipy", "sklearn"]]    # scikit-learn and scipy load on a metric's first use
    metadata = next(venv.glob("lib/python3*/site-packages/oodnc-*.dist-info/METADATA")).read_text()
    meta = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    meta = [r for r in meta if "extra ==" not in r]
    assert {str(r) for r in RUNTIME} == {str(Requirement(r)) for r in meta}

