"""Child processes for tests, forked by multiprocessing's forkserver, which imports sddlib once per test session:
each child is a process of its own (it can be SIGKILLed, it can join a process group), started after nothing but
imports, in well under a second instead of the ~15 s a fresh interpreter spends importing torch, fastai and sddlib."""
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["sddlib.experiment", "torch._dynamo"])


def _logged(target, args, log):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
    target(*args)


def run_children(target, arg_tuples, timeout=600) -> list[SimpleNamespace]:
    """`target(*args)` in one child per tuple, all started at once; each child's exit code (-SIGKILL when killed)
    and everything it printed, as `returncode` and `stdout` (= `stderr`)."""
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"child{i}.log" for i in range(len(arg_tuples))]
        children = [FORKSERVER.Process(target=_logged, args=(target, args, str(log)))
                    for args, log in zip(arg_tuples, logs)]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout)
            if child.exitcode is None:
                for other in children:
                    other.kill()
                raise TimeoutError(f"a child running {target.__name__} did not finish in {timeout} s")
        texts = [log.read_text() for log in logs]
    return [SimpleNamespace(returncode=c.exitcode, stdout=t, stderr=t) for c, t in zip(children, texts)]
