"""The README's main command end to end: the smoke book is built by the runner and read in a real browser.

Runs ``python -m helpers.run --profile smoke`` (the entry point of ``make book``) once per test session, on a
smaller smoke configuration (``SMALLER``: the same code path and pages, a quarter of the images and fewer epochs,
so 115 s instead of 190 s on one core; the default configuration is what ``make book`` builds), then
checks the executed notebooks (the property nbval checked with a second execution of the series: every
notebook runs top to bottom in a fresh kernel without an error, and every ``# NBVAL_CHECK_OUTPUT`` cell prints)
and opens every page of the table of contents in Debian's headless Chromium to check what it renders: each
page has its heading, no image is broken, equations are typeset by MathJax (no raw TeX left), and nothing is
fetched from the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.config import REPO_ROOT
from helpers.run import NOTEBOOKS

from .browser import chromium, render
from .conftest import worker_threads
from .test_notebook_files import plotting_cells

HTML = REPO_ROOT / "_build" / "smoke" / "book" / "_build" / "html"
EXECUTED = REPO_ROOT / "_build" / "smoke" / "executed"
MATHS_PAGES = ("book/metrics", "book/scores", "book/collapse")
SMALLER = ["-p", "num_classes", "16", "-p", "per_class", "20", "-p", "epochs", "8", "-p", "ood_subset", "300"]


def test_toc_has_the_instructors_pages_and_every_doc_reference_resolves() -> None:
    pages = {p.removesuffix(".html") for p in toc_pages()}
    assert {"book/assignment", "book/glossary", "book/summary"} <= pages
    for page in pages - {"book/results"}:
        path = REPO_ROOT / (page + (".ipynb" if page.startswith("notebooks/") else ".md"))
        assert path.exists(), f"{page} is in _toc.yml but has no file"
    for md in (REPO_ROOT / "book").glob("*.md"):
        for target in re.findall(r"\{doc\}`(?:[^<`]*<)?([^>`]+)>?`", md.read_text()):
            resolved = (md.parent / target).resolve() if not target.startswith("/") else REPO_ROOT / target[1:]
            assert any(resolved.with_suffix(s).exists() for s in (".md", ".ipynb")), f"{md.name}: {{doc}}`{target}`"


def test_the_book_hides_plumbing_cells_and_fits_wide_tables() -> None:
    css = (REPO_ROOT / "book" / "_static" / "plumbing.css").read_text()
    assert ".tag_injected-parameters" in css and "overflow-x" in css
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert "plumbing.css" in config["html_css_files"] and "book/_static" in config["html_static_path"]


def toc_pages() -> list[str]:
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    pages = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f"{p}.html" for p in pages]


@pytest.fixture(scope="session")
def built_book() -> Path:
    env = {**os.environ, "MPLBACKEND": "Agg", **worker_threads()}
    result = subprocess.run([sys.executable, "-m", "helpers.run", "--profile", "smoke", *SMALLER], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"the smoke book build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (HTML / "index.html").exists()
    return HTML


@pytest.mark.slow
def test_book_pages_render_in_chromium(built_book: Path, tmp_path: Path) -> None:
    if chromium() is None:
        how = "apt-get install --no-install-recommends chromium (make test does it where apt-get and root exist)"
        if os.environ.get("CI") and shutil.which("apt-get"):
            pytest.fail(f"Debian's chromium is not installed; {how}")
        pytest.skip(f"browser test skipped: chromium is not installed; {how}")
    pages = toc_pages()
    reports = render(built_book, pages, screenshot_dir=tmp_path)
    print("\npages checked in Chromium:")
    for r in reports:
        print(f"  {r.path}: heading {r.heading!r}, {r.maths} equations, {r.images} images")
    for r in reports:
        assert r.heading.strip(), f"{r.path} has no heading"
        assert not r.broken, f"{r.path} has broken images: {r.broken}"
        assert r.raw_tex == 0, f"{r.path} shows {r.raw_tex} pieces of raw TeX (MathJax did not typeset them)"
        assert r.mathjax_errors == 0, f"{r.path} has MathJax errors"
        assert not r.requests_outside, f"{r.path} tried to fetch {r.requests_outside[:3]} (the book must be offline)"
    for r in reports:
        if r.path.removesuffix(".html") in MATHS_PAGES:
            assert r.maths > 10, f"{r.path}: only {r.maths} typeset equations"
        if r.path.startswith("notebooks/"):
            name = r.path.removeprefix("notebooks/").removesuffix(".html")
            expected = plotting_cells(name)
            assert r.images >= expected, f"{r.path}: {r.images} figures shown, {expected} plotting cells"


@pytest.mark.slow
def test_every_notebook_ran_without_error_and_printed_its_checked_cells(built_book: Path) -> None:
    for name in NOTEBOOKS:
        cells = [c for c in json.loads((EXECUTED / f"{name}.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
        assert all(c["execution_count"] is not None for c in cells), f"{name}: a cell did not run"
        errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
        assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
        for c in cells:
            if "".join(c["source"]).startswith("# NBVAL_CHECK_OUTPUT"):
                text = "".join("".join(o.get("text", "")) for o in c["outputs"] if o["output_type"] == "stream")
                assert text.strip(), f"{name}: a checked cell printed nothing"
