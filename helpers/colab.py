"""Running the notebooks on Colab: the repository's address, the notebooks' first cell, Drive, the training plan.

The first code cell of every notebook is rendered by :func:`render_cell` from :data:`REPO` (the one place the
address lives; ``OODNC_REPO`` overrides it, e.g. for a fork) and written into the notebooks by

    python -m helpers.colab --write        # --check: exit 1 when a notebook's cell differs

On Colab the cell clones the repository into ``/content/ood-nc`` (``OODNC_CONTENT`` stands in for ``/content``),
installs it, stops with a one-line error naming the failed step when either fails, and calls :func:`setup`.
Elsewhere it does nothing. ``_DRIVE = True`` in the cell (or ``OODNC_DRIVE=1``) keeps the artifacts on Google
Drive, so notebooks 02-05 find notebook 01's checkpoints in a later session.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .artifacts import ensure_writable, write_text
from .checkpoint import list_checkpoints
from .config import REPO_ROOT, Config
from .device import device_name
from .profiles_help import cpu_images_per_s, epoch_images, format_duration, gpu_images_per_s, training_seconds
from .train import checkpoint_dir

REPO = "https://github.com/ood-nc-course/ood-neural-collapse"
CLONE = "ood-nc"                                  # the clone's folder in /content
DRIVE_ARTIFACTS = Path("MyDrive") / "ood-nc" / "artifacts"
MARKER = "# Colab:"                               # how the first line of the rendered cell begins
NOTEBOOKS = tuple(sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))

CELL = '''# Colab: clone and install the project when running there; does nothing elsewhere.
# Rendered from helpers/colab.py by `python -m helpers.colab --write`: edit it there, not here.
import os
import subprocess
import sys
from pathlib import Path

_DRIVE = False  # True: artifacts on Google Drive, so notebooks 02-05 reuse notebook 01's checkpoints next session

if "google.colab" in sys.modules:
    _REPO = os.environ.get("OODNC_REPO", "{repo}")
    _HOME = Path(os.environ.get("OODNC_CONTENT", "/content")) / "{clone}"

    def _step(what, cmd):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\\n")
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{{what}} failed ({{last[0]}}); check the address (OODNC_REPO sets another) "
                               "and the runtime's network, then run this cell again.")

    if not (_HOME / ".git").is_dir():
        _step(f"cloning {{_REPO}} into {{_HOME}}", ["git", "clone", "-q", _REPO, str(_HOME)])
    _step(f"installing {{_HOME}}", [sys.executable, "-m", "pip", "install", "-q", "-e", str(_HOME)])
    sys.path.insert(0, str(_HOME))
    os.chdir(_HOME / "notebooks")
    from helpers import colab as _colab

    print(_colab.setup(_HOME, drive=_DRIVE))'''


def repo_address() -> str:
    """The repository the Colab cell clones: ``$OODNC_REPO`` or :data:`REPO`."""
    return os.environ.get("OODNC_REPO") or REPO


def render_cell(repo: str | None = None) -> str:
    """Source of the notebooks' first code cell, cloning ``repo`` (default :func:`repo_address`)."""
    return CELL.format(repo=repo or repo_address(), clone=CLONE)


def colab_cell(nb: dict) -> dict | None:
    """The notebook's first code cell (where the Colab cell belongs), or None when it has no code cell."""
    return next((cell for cell in nb["cells"] if cell["cell_type"] == "code"), None)


def write_notebook(path: Path, source: str) -> bool:
    """Put ``source`` into the notebook's Colab cell (inserted before the first code cell when the first is not
    one); returns whether the file changed. Outputs of the cell are cleared."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cell = colab_cell(nb)
    if cell is None or not "".join(cell["source"]).startswith(MARKER):
        cell = dict(cell_type="code", execution_count=None, id="colab", metadata={}, outputs=[], source=[])
        first = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"), len(nb["cells"]))
        nb["cells"].insert(first, cell)
    lines = source.splitlines(keepends=True)
    if cell["source"] == lines and not cell["outputs"]:
        return False
    cell.update(source=lines, outputs=[], execution_count=None)
    write_text(Path(path), json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return True


def setup(home: Path, drive: bool = False) -> str:
    """Finish the Colab cell: check that ``helpers`` comes from the clone ``home``; with ``drive`` (or
    ``OODNC_DRIVE=1``) point ``OODNC_ARTIFACTS`` at Google Drive. Returns the line the cell prints."""
    here = Path(__file__).resolve().parent
    if here != (Path(home) / "helpers").resolve():
        raise RuntimeError(f"helpers was imported from {here}, not from the clone {home}; restart the session "
                           "(Runtime > Restart session) and run this cell again.")
    line = f"helpers from {here}"
    if drive or os.environ.get("OODNC_DRIVE", "").lower() in ("1", "true", "yes"):
        folder = drive_artifacts(Path(home).parent)
        os.environ["OODNC_ARTIFACTS"] = str(folder)
        return f"{line}; artifacts on Google Drive in {folder}"
    return f"{line}; artifacts in {home}/artifacts, gone when the session ends (_DRIVE = True keeps them on Drive)"


def drive_artifacts(content: Path) -> Path:
    """``<content>/drive/MyDrive/ood-nc/artifacts``, mounting Google Drive at ``<content>/drive`` if needed."""
    mount = Path(content) / "drive"
    if not (mount / "MyDrive").is_dir():
        from google.colab import drive

        drive.mount(str(mount))
    if not (mount / "MyDrive").is_dir():
        raise RuntimeError(f"Google Drive is not mounted at {mount}; allow the access Colab asks for, "
                           "or set _DRIVE = False to keep the artifacts in the session.")
    return ensure_writable(mount / DRIVE_ARTIFACTS)


def images_per_s(cfg: Config, device: torch.device) -> float:
    """Training throughput on ``device``: measured on CPUs, estimated on GPUs (:mod:`helpers.profiles_help`)."""
    if device.type == "cuda":
        return gpu_images_per_s(cfg.width, device_name(device), cfg.batch_size)
    return cpu_images_per_s(cfg.width, torch.get_num_threads())


def training_plan(cfg: Config, device: torch.device) -> str:
    """The line a notebook prints before any training: checkpoints found, or what training starts and how long
    it roughly takes on ``device``."""
    folder = checkpoint_dir(cfg)
    found = list_checkpoints(folder) if folder.exists() else {}
    last = max(found, default=0)
    if last >= cfg.epochs:
        return f"checkpoints found in {folder} (up to epoch {last}): nothing to train."
    left = format_duration(training_seconds(cfg, images_per_s(cfg, device), epochs=cfg.epochs - last))
    where = f"about {left} on {device_name(device)}"
    if last:
        return f"checkpoints up to epoch {last} of {cfg.epochs} in {folder}: training resumes, {where}."
    n_train = (epoch_images(cfg) or ("?",))[0]
    return f"no checkpoints in {folder}: training {cfg.epochs} epochs on {n_train} images starts now, {where}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.colab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write the rendered cell into every notebook")
    parser.add_argument("--check", action="store_true", help="exit 1 when a notebook's Colab cell differs")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        print(render_cell())
        return 0
    source = render_cell()
    stale = [p for p in NOTEBOOKS if "".join((colab_cell(json.loads(p.read_text())) or {}).get("source", [])) != source]
    if args.write:
        for path in stale:
            write_notebook(path, source)
        print(f"Colab cell written into {len(stale)} of {len(NOTEBOOKS)} notebooks")
        return 0
    for path in stale:
        print(f"{path.name}: the Colab cell differs from helpers/colab.py; run python -m helpers.colab --write")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
