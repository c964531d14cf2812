"""How sddlib's own processes load the heavy modules (torch, fastai, pandas, matplotlib, scikit-learn: over half a
million objects that live as long as the process). CPython's cyclic garbage collector walks every one of them in
each full collection: several while they load, now and then while a run trains, and several more while the
interpreter exits (about 0.2 s each here). Loaded with the collector paused, then frozen out of its reach
(`gc.freeze`), what `python -m sddlib` loads takes a fresh interpreter 2.6 s instead of 3.4 s from start to exit on
a 2-core CPU (`benchmarks/startup.py`, recorded in benchmarks/results.md).

Only for processes sddlib starts and owns (its command lines and torchrun's workers): a frozen object that later
becomes cyclic garbage is never freed, so freezing inside a user's session could keep a fastai Learner they had
made before and dropped after. Objects freed by their reference count are freed as always."""
from __future__ import annotations

import gc
import sys
from contextlib import contextmanager


@contextmanager
def heavy_imports():
    """The imports inside are loaded with the collector paused and frozen afterwards, in a fresh process; where
    torch is loaded already the process has been at work (a test, a user's session calling a command's `main`):
    nothing heavy is left to load and its objects are not sddlib's to freeze, so nothing changes."""
    if "torch" in sys.modules:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        freeze_imports()
        if enabled:
            gc.enable()


def freeze_imports() -> None:
    """Move every object alive now, the loaded modules' above all, out of the collector's reach: a command whose
    module imports them at its top calls it once they are loaded, before its work."""
    gc.freeze()
