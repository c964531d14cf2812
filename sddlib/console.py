"""Where a run's lines go. A terminal (the CLI, a sweep's job, torchrun) shows every line; a notebook kernel shows one
summary line per run, and every line, epochs included, is kept in the run's own `log.txt` whatever the place: a
notebook of nine runs would otherwise bury its tables under hundreds of epoch lines."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

__all__ = ["LOG_FILE", "live_notebook", "notebook_kernel", "progress_bars_wanted", "run_log", "say"]

LOG_FILE = "log.txt"


def live_notebook() -> bool:
    """True in the kernel of a Jupyter server (JupyterLab, Notebook: they name the session in JPY_SESSION_NAME),
    where fastai's progress bar is watched live; False headless (papermill, scripts, torchrun), whose logs read
    better as one plain line per epoch."""
    return bool(os.environ.get("JPY_SESSION_NAME")) and notebook_kernel()


def notebook_kernel() -> bool:
    """True in a notebook kernel, watched live or run headless by papermill (a process that merely imported
    ipykernel, a test runner say, is not one)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def progress_bars_wanted() -> bool:
    """A progress bar helps a person watching (a terminal, a live notebook); a headless kernel would keep only its
    empty residue in the executed notebook."""
    return live_notebook() or not notebook_kernel()


class _Tee:
    """A text stream writing to a file and, when `echo` is a stream, to it too."""

    def __init__(self, file, echo, console):
        self.file, self.echo, self.console = file, echo, console

    def write(self, text: str) -> int:
        self.file.write(text)
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        self.file.flush()
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def run_log(folder, echo: bool | None = None):
    """Within it, what the process prints is appended to `folder/log.txt`, and also shown unless `echo` is False
    (None: shown outside a notebook kernel). The run's summary line is printed after it, so a notebook shows that."""
    echo = not notebook_kernel() if echo is None else echo
    path = Path(folder) / LOG_FILE
    with path.open("a", encoding="utf-8") as file:
        with contextlib.redirect_stdout(_Tee(file, sys.stdout if echo else None, sys.stdout)):
            yield path


def say(text: str) -> None:
    """Print one line that is shown even inside a quiet `run_log` (and kept in its file too)."""
    out = sys.stdout
    if isinstance(out, _Tee) and out.echo is None:
        out.file.write(text + "\n")
        out = out.console
    print(text, file=out, flush=True)
