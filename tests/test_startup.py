"""sddlib's own processes load torch, fastai and the rest with the garbage collector paused, then frozen out of its
reach (sddlib.startup); a process that had torch loaded already (a test, a user's session) is left as it is."""
import gc
import subprocess
import sys
from pathlib import Path

import torch

from sddlib.startup import heavy_imports

REPO = Path(__file__).resolve().parents[1]


def test_a_fresh_process_loads_with_the_collector_paused_then_freezes(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")     # as in a process that has not loaded it yet (restored after)
    frozen = gc.get_freeze_count()
    with heavy_imports():
        assert not gc.isenabled()
        monkeypatch.setitem(sys.modules, "torch", torch)
        loaded = [[] for _ in range(10)]   # objects the collector tracks, made while it is paused
    assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(loaded)


def test_where_torch_is_loaded_nothing_changes():
    frozen = gc.get_freeze_count()
    with heavy_imports():
        assert gc.isenabled()
        made = [[] for _ in range(10)]
    assert gc.get_freeze_count() == frozen and made


def test_python_m_sddlib_freezes_what_it_loaded():
    """The command's `main` in a fresh interpreter: a bad parameter ends it after its modules have loaded."""
    code = ("import gc; from sddlib.__main__ import main; status = main(['-p', 'dataset', 'nope']); "
            "print(status, gc.isenabled(), gc.get_freeze_count())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    status, enabled, frozen = done.stdout.split()
    assert (status, enabled) == ("2", "True") and int(frozen) > 100_000, done.stderr[-2000:]
