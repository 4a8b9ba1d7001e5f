"""The one progress bar of the package: live where someone watches, one clean line in executed notebooks.

Which bar :func:`progress_bar` draws (``OODNC_PROGRESS`` forces one of the modes):

- ``terminal``: outside a Jupyter kernel, tqdm's plain bar on stderr;
- ``widget``: in a Jupyter kernel that has ipywidgets (Jupyter, Colab), tqdm's notebook widget;
- ``text``: in a kernel without ipywidgets, e.g. a notebook executed headless by papermill. The kernel's own
  terminal (the runner's, when it has one) gets a line per step, at most one every ``TEXT_INTERVAL``
  seconds, so training epochs show loss, accuracy and time left live; the notebook itself keeps only the
  bar's final line (none for ``leave=False`` bars);
- ``off``: no bar.

``tqdm.auto`` is never imported: in a kernel without ipywidgets it warns ``IProgress not found``, and that
warning would be printed by the runner and rendered in the book.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, TextIO

from tqdm.std import tqdm as std_tqdm

MODES = ("terminal", "widget", "text", "off")
TEXT_INTERVAL = 10.0          # seconds between two lines of a text bar


def in_kernel() -> bool:
    """True inside a Jupyter (IPython) kernel, where stdout goes to a notebook rather than a terminal."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and "IPKernelApp" in getattr(shell, "config", {})


def progress_mode() -> str:
    """``OODNC_PROGRESS`` when set, else ``widget``/``text`` in a kernel (with/without ipywidgets), else
    ``terminal``."""
    asked = os.environ.get("OODNC_PROGRESS", "").strip().lower()
    if asked:
        if asked not in MODES:
            raise ValueError(f"OODNC_PROGRESS={asked!r} is not a progress mode; use one of {', '.join(MODES)}.")
        return asked
    if not in_kernel():
        return "terminal"
    return "widget" if importlib.util.find_spec("ipywidgets") is not None else "text"


class LineWriter:
    """File for tqdm that turns its ``\\r`` redraws into whole lines: every new state as one line to the file
    descriptor ``terminal`` (when given), and the last state to ``notebook`` when the bar closes."""

    def __init__(self, terminal: int | None, notebook: TextIO | None) -> None:
        self.terminal, self.notebook = terminal, notebook
        self.last = ""

    def write(self, s: str) -> int:
        state = s.replace("\n", "\r").split("\r")
        line = next((part.strip() for part in reversed(state) if part.strip()), "")
        if line and line != self.last:
            self.last = line
            if self.terminal is not None:
                os.write(self.terminal, (line + "\n").encode())
        if "\n" in s and self.notebook is not None and self.last:
            self.notebook.write(self.last + "\n")
            self.notebook.flush()
            self.notebook = None                       # one final line, however often tqdm closes
        return len(s)

    def flush(self) -> None:
        pass


class TextBar(std_tqdm):
    """tqdm whose count is current at every redraw (plain tqdm counts in a local variable between redraws),
    and whose postfix waits for the next redraw, so that each line shows the finished step's numbers."""

    def __iter__(self):
        if self.disable:
            yield from self.iterable
            return
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def kernel_terminal() -> int | None:
    """File descriptor of the terminal the kernel was started from (the runner's stderr), None if unknown.

    ipykernel keeps a copy of the original stderr descriptor to echo captured output to; a line written
    there shows in the terminal only, not in the notebook. Without that capture, descriptor 2 is the terminal."""
    fd = getattr(sys.stderr, "_original_stdstream_copy", None)
    if isinstance(fd, int):
        return fd
    try:                                     # no descriptor capture (ipykernel skips it under pytest): fd 2 is it
        return sys.__stderr__.fileno() if sys.__stderr__ is not None and sys.stderr is not sys.__stderr__ else None
    except (OSError, ValueError):
        return None


def progress_bar(iterable: Any = None, **kwargs: Any) -> std_tqdm:
    """``tqdm(iterable, **kwargs)`` drawn the way :func:`progress_mode` chooses (same arguments as tqdm)."""
    mode = progress_mode()
    if mode == "off":
        return std_tqdm(iterable, **{**kwargs, "disable": True})
    if mode == "widget":
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, **kwargs)
    if mode == "terminal":
        return std_tqdm(iterable, **kwargs)
    keep = kwargs.pop("leave", True)
    writer = LineWriter(kernel_terminal(), sys.stdout if keep else None)
    return TextBar(iterable, **{"mininterval": TEXT_INTERVAL, "ascii": True, "ncols": 100, **kwargs},
                   file=writer, leave=True)
