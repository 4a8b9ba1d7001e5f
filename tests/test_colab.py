"""Where readers run the notebooks: the Colab cell (rendered from one source, failing loudly, Drive), the
training plan each notebook prints, the progress bar of headless runs, and Colab simulated end to end."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from helpers import colab, profiles_help, progress, train
from helpers.config import REPO_ROOT

from .conftest import make_tiny
from .test_packaging import copy_tree

STUB = '"""Stand-in for Colab\'s module: its presence is what the first cell checks."""\n'
DRIVE_STUB = ("from pathlib import Path\n\n\ndef mount(path):\n"
              "    (Path(path) / 'MyDrive').mkdir(parents=True, exist_ok=True)\n")


def colab_stub(folder: Path) -> Path:
    """A ``google.colab`` package (with ``drive.mount``) and a sitecustomize that imports it, as Colab's
    kernel has it imported; returns the folder to put on PYTHONPATH."""
    pkg = folder / "google" / "colab"
    pkg.mkdir(parents=True)
    (folder / "google" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(STUB)
    (pkg / "drive.py").write_text(DRIVE_STUB)
    (folder / "sitecustomize.py").write_text("import google.colab  # noqa: F401\n")
    return folder


# ------------------------------------------------------------------------------------------ the rendered cell
@pytest.mark.parametrize("path", colab.NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_starts_with_the_rendered_colab_cell(path: Path) -> None:
    cell = colab.colab_cell(json.loads(path.read_text()))
    assert cell is not None and "".join(cell["source"]) == colab.render_cell(), (
        f"{path.name}: the Colab cell differs from helpers/colab.py; run python -m helpers.colab --write")
    assert not cell["outputs"]


def test_the_address_lives_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OODNC_REPO", raising=False)
    assert f'"{colab.REPO}"' in colab.render_cell()
    monkeypatch.setenv("OODNC_REPO", "https://example.org/fork.git")
    assert '"https://example.org/fork.git"' in colab.render_cell() and colab.REPO not in colab.render_cell()
    assert "/dev/null" not in colab.render_cell()


def test_write_notebook_replaces_or_inserts_the_cell_and_keeps_the_rest(tmp_path: Path) -> None:
    src = json.loads(colab.NOTEBOOKS[0].read_text())
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(src))
    assert colab.write_notebook(path, "# Colab: new\nx = 1\n")
    out = json.loads(path.read_text())
    assert "".join(colab.colab_cell(out)["source"]) == "# Colab: new\nx = 1\n"
    assert len(out["cells"]) == len(src["cells"]) and out["cells"][2:] == src["cells"][2:]
    assert not colab.write_notebook(path, "# Colab: new\nx = 1\n")            # unchanged: not rewritten
    src["cells"] = [c for c in src["cells"] if not "".join(c["source"]).startswith(colab.MARKER)]
    path.write_text(json.dumps(src))
    colab.write_notebook(path, "# Colab: again\n")
    out = json.loads(path.read_text())
    assert len(out["cells"]) == len(src["cells"]) + 1 and "".join(colab.colab_cell(out)["source"]) == "# Colab: again\n"


def run_cell(tmp_path: Path, repo: str) -> subprocess.CompletedProcess:
    """Run the rendered cell as Colab would (google.colab imported), with tmp_path/content as /content."""
    env = {**os.environ, "PYTHONPATH": str(colab_stub(tmp_path / "stub")), "OODNC_CONTENT": str(tmp_path / "content")}
    (tmp_path / "content").mkdir()
    return subprocess.run([sys.executable, "-c", colab.render_cell(repo)], capture_output=True, text=True, env=env,
                          cwd=tmp_path / "content", timeout=120)


def test_the_cell_fails_loudly_when_the_clone_fails(tmp_path: Path) -> None:
    done = run_cell(tmp_path, str(tmp_path / "no-such-repo"))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: cloning") and "failed (fatal:" in last and "OODNC_REPO" in last
    assert "does not exist" in done.stdout                    # git's own message is shown, not discarded


def test_the_cell_does_nothing_outside_colab(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", colab.render_cell(str(tmp_path / "x"))], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0 and done.stdout == "" and not (tmp_path / "ood-nc").exists()


def test_setup_refuses_helpers_imported_from_elsewhere(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not from the clone"):
        colab.setup(tmp_path / "ood-nc")
    assert colab.setup(REPO_ROOT).startswith(f"helpers from {REPO_ROOT / 'helpers'}; artifacts in")


def test_drive_artifacts_mounts_drive_or_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(colab_stub(tmp_path / "stub")))
    folder = colab.drive_artifacts(tmp_path / "content")
    assert folder == tmp_path / "content" / "drive" / "MyDrive" / "ood-nc" / "artifacts" and folder.is_dir()
    import google.colab.drive as drive

    monkeypatch.setattr(drive, "mount", lambda path: None)              # the reader refused access
    with pytest.raises(RuntimeError, match="Google Drive is not mounted"):
        colab.drive_artifacts(tmp_path / "elsewhere")


# ---------------------------------------------------------------------------------------- the training plan
def test_training_time_estimates_follow_the_measured_figures() -> None:
    assert profiles_help.cpu_images_per_s(16) == pytest.approx(340)
    assert profiles_help.cpu_images_per_s(64) == pytest.approx(24)
    assert profiles_help.cpu_images_per_s(16, threads=4) == pytest.approx(680)
    assert 24 < profiles_help.cpu_images_per_s(32) < 340
    assert profiles_help.gpu_images_per_s(64, "Tesla T4") == pytest.approx(65e12 * 0.15 / 3.33e9)
    assert profiles_help.gpu_images_per_s(64, "NVIDIA H100 80GB HBM3") > profiles_help.gpu_images_per_s(64, "A100")
    launch_bound = 128 / profiles_help.STEP_LAUNCH_S                      # a narrow net waits for the host
    assert profiles_help.gpu_images_per_s(16, "NVIDIA H100 80GB HBM3") == pytest.approx(launch_bound)
    assert profiles_help.gpu_images_per_s(16, "H100", batch_size=64) == pytest.approx(launch_bound / 2)
    cfg = make_tiny(Path("/unused"))                       # 5 classes x 8 images: 36 train, 4 validation
    assert profiles_help.epoch_images(cfg) == (36, 4)
    assert profiles_help.training_seconds(cfg, 10.0) == pytest.approx(3 * (36 + 4 / 3) / 10)
    assert [profiles_help.format_duration(s) for s in (0.2, 75, 600, 5400, None)] == [
        "1 s", "75 s", "10 min", "1.5 h", "an unknown time"]


def test_profile_help_has_one_line_per_profile_and_shows_p() -> None:
    text = profiles_help.profile_help()
    for name in ("smoke", "cpu", "full", "auto"):
        assert sum(line.startswith(f"  {name} ") for line in text.splitlines()) == 1
    assert "-p NAME VALUE" in text and "on 2 CPU cores" in text and "on a T4" in text


def test_training_plan_says_found_resume_or_train(tmp_path: Path) -> None:
    cfg, cpu = make_tiny(tmp_path), torch.device("cpu")
    before = colab.training_plan(cfg, cpu)
    assert before.startswith("no checkpoints in") and "training 3 epochs on 36 images starts now" in before
    assert "on CPU" in before
    train.fit(cfg, device=cpu, progress=False)
    assert colab.training_plan(cfg, cpu).startswith("checkpoints found in") and "nothing to train" in \
        colab.training_plan(cfg, cpu)
    (train.checkpoint_dir(cfg) / "epoch-0003.pt").unlink()
    assert "up to epoch 2 of 3" in colab.training_plan(cfg, cpu) and "training resumes" in colab.training_plan(cfg, cpu)


# ----------------------------------------------------------------------------------------- progress bars
def test_progress_mode_outside_a_kernel_and_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OODNC_PROGRESS", raising=False)
    assert progress.progress_mode() == "terminal"
    monkeypatch.setenv("OODNC_PROGRESS", "text")
    assert progress.progress_mode() == "text"
    monkeypatch.setenv("OODNC_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="OODNC_PROGRESS"):
        progress.progress_mode()


def test_text_bar_prints_each_state_once_to_the_terminal_and_the_last_to_the_notebook() -> None:
    read, write = os.pipe()
    notebook = io.StringIO()
    bar = progress.TextBar(range(3), desc="training", file=progress.LineWriter(write, notebook), mininterval=0,
                           ascii=True, ncols=80)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    os.close(write)
    terminal = os.read(read, 100_000).decode().splitlines()
    os.close(read)
    assert "\r" not in "".join(terminal) and len(terminal) == len(set(terminal))
    assert [t.split("|")[0].strip() for t in terminal[:4]] == ["training:   0%", "training:  33%", "training:  67%",
                                                                "training: 100%"]
    assert "loss=1.000" in terminal[1] and "loss=0.333" in terminal[-1]     # each line: the finished step's loss
    assert notebook.getvalue().count("\n") == 1 and "3/3" in notebook.getvalue()


PROGRESS_CELL = """import time
from helpers import progress
progress.TEXT_INTERVAL = 0
bar = progress.progress_bar(range(3), desc="training", total=3)
for i in bar:
    time.sleep(0.05)
    bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
for _ in progress.progress_bar(range(2), desc="features", leave=False):
    pass
"""


def test_headless_notebook_shows_progress_in_the_terminal_and_one_line_in_the_notebook(tmp_path: Path) -> None:
    """papermill runs a kernel without ipywidgets: no IProgress warning, live lines in the terminal."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROGRESS_CELL)])
    nbformat.write(nb, tmp_path / "in.ipynb")
    script = (f"import papermill as pm; pm.execute_notebook({str(tmp_path / 'in.ipynb')!r}, "
              f"{str(tmp_path / 'out.ipynb')!r}, progress_bar=False, kernel_name='python3', cwd={str(REPO_ROOT)!r})")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}   # ipykernel acts differently
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training:  67%" in done.stderr and "loss=0.500" in done.stderr and "features: 100%" in done.stderr
    outputs = [o.get("text", "") for c in nbformat.read(tmp_path / "out.ipynb", 4).cells for o in c["outputs"]]
    assert len(outputs) == 1 and outputs[0].count("\n") == 1 and "3/3" in outputs[0], outputs
    assert "IProgress" not in done.stderr + "".join(outputs)


# ------------------------------------------------------------------------------------ Colab, simulated
def upstream(tmp_path: Path) -> Path:
    """A git repository holding this working tree's files (tracked and new), standing in for the published one."""
    repo = copy_tree(tmp_path / "upstream")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)
    return repo


def colab_python(tmp_path: Path) -> Path:
    """A fresh venv standing in for Colab's Python: its own site-packages (where the cell installs the clone),
    with this environment's packages visible through a .pth (but not its editable install of helpers)."""
    venv = tmp_path / "colab-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin" / "python"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_colab_simulated_first_cell_and_notebook_01(tmp_path: Path) -> None:
    repo, python = upstream(tmp_path), colab_python(tmp_path)
    content = tmp_path / "content"
    content.mkdir()
    src = json.loads((REPO_ROOT / "notebooks" / "01_training.ipynb").read_text())
    colab.colab_cell(src)["source"] = colab.render_cell(str(repo)).splitlines(keepends=True)
    src["cells"].append(dict(cell_type="code", execution_count=None, id="where", metadata={}, outputs=[],
                             source=["import helpers, os\n", "print('HELPERS', helpers.__file__)\n",
                                     "print('ARTIFACTS', os.environ['OODNC_ARTIFACTS'])"]))
    (tmp_path / "in.ipynb").write_text(json.dumps(src))
    params = dict(profile="smoke", epochs=2, num_classes=10, per_class=8, batch_size=16, width=4, checkpoint_every=1)
    script = (f"import papermill as pm; pm.execute_notebook({str(tmp_path / 'in.ipynb')!r}, "
              f"{str(tmp_path / 'out.ipynb')!r}, parameters={params!r}, kernel_name='python3', "
              f"cwd={str(content)!r}, progress_bar=False)")
    env = {**os.environ, "PYTHONPATH": str(colab_stub(tmp_path / "stub")), "OODNC_CONTENT": str(content),
           "OODNC_DRIVE": "1", "OODNC_DATA": str(tmp_path / "data"), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("OODNC_ARTIFACTS", None)
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, cwd=content,
                          timeout=1100)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    import nbformat

    cells = nbformat.read(tmp_path / "out.ipynb", 4).cells
    text = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
    clone = content / "ood-nc"
    assert f"HELPERS {clone / 'helpers' / '__init__.py'}" in text
    drive = content / "drive" / "MyDrive" / "ood-nc" / "artifacts"
    assert f"ARTIFACTS {drive}" in text and f"artifacts on Google Drive in {drive}" in text
    assert list(drive.glob("smoke-*/checkpoints/epoch-0002.pt")), "notebook 01's checkpoints are not on Drive"
    assert "IProgress" not in text + done.stderr
