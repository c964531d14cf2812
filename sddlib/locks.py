"""One process per run folder, one trainer or downloader per teacher: locks that hold on one machine and on a
filesystem that several nodes share.

`run_lock(folder)` takes one of two kinds, chosen by the environment variable `SDDLIB_LOCKS`:

- `flock` (the default): the kernel's flock on `<folder>/<name>`, released by the kernel when its holder dies.
  Where the filesystem refuses flock (ENOLCK, ENOSYS, EOPNOTSUPP: Lustre mounted without `flock`, some NFS
  mounts) the lock is a lease instead, and the process says so once.
- `lease`: always a lease, for a filesystem whose flock holds within one node only (Lustre's `localflock`,
  NFS without a lock manager), where two jobs on two nodes would otherwise both get the lock.

A lease is the file `<folder>/<name>.lease`, created exclusively (O_EXCL), recording the holder's host, pid and
a heartbeat that a thread of the holder rewrites every `LEASE_S / 4` seconds. A lease whose heartbeat is older
than `LEASE_S` (or whose holder was a process of this host, in this pid namespace, that no longer exists) is taken
over, with one line saying so. A holder that stalls for longer than that loses its lease, and says so when it wakes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from .validators import ConfigError

__all__ = ["RunLockedError", "run_lock", "lock_kind", "holder", "process_alive", "LOCKS_ENV", "LEASE_S"]

LOCKS_ENV = "SDDLIB_LOCKS"
LEASE_S = 120.0    # a lease whose heartbeat is older than this is taken over
_BEAT_S = LEASE_S / 4
_POLL_S = 0.5      # how often a process waiting for a lease looks again
_RECORD_BYTES = 512  # every heartbeat rewrites the whole record in place, padded to one size
_FLOCK_REFUSED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
_said_flock_refused = False


class RunLockedError(RuntimeError):
    """Another process is training the same run folder."""


def lock_kind() -> str:
    """'flock' or 'lease', from `SDDLIB_LOCKS` (default flock, leases where the filesystem refuses it)."""
    kind = os.environ.get(LOCKS_ENV, "").strip().lower() or "flock"
    if kind not in ("flock", "lease"):
        raise ConfigError(f"{LOCKS_ENV}={os.environ[LOCKS_ENV]!r} is not a kind of lock; expected 'flock' (the "
                          "default; leases where the filesystem refuses flock) or 'lease' (for a filesystem whose "
                          f"flock holds within one node only), so set {LOCKS_ENV}=lease or unset it.")
    return kind


@contextlib.contextmanager
def run_lock(folder, wait: bool = False, name: str = ".lock"):
    """Hold the lock `<folder>/<name>`: `wait=False` raises `RunLockedError` at once, naming the host and pid of
    the process that holds it; `wait=True` waits for it. A process that dies never leaves it held for good."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        if lock_kind() == "lease" or not held.enter_context(_flock(folder / name, wait)):
            held.enter_context(_lease(folder / f"{name}.lease", wait))
        yield


def holder(folder, name: str = ".lock") -> str | None:
    """Who holds `<folder>/<name>` now ("process N on HOST"), or None: a lease whose holder lives, or a flock that a
    shared, non-blocking probe cannot take (the probe holds it for an instant only; `sweep --status` asks this)."""
    path = Path(folder) / name
    owner = _read(Path(f"{path}.lease"))
    if owner is not None and _stale(owner) is None:
        return _describe(owner)
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "another process"
            except OSError:
                return None  # no flock here: the lease above is the lock
            fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        pass
    return None


def _holder() -> str:
    return f"process {os.getpid()} on {socket.gethostname()}"


def _refuse(folder: Path, owner: str):
    raise RunLockedError(f"{folder} is being trained by {owner}; wait for it to finish or give this run "
                         "another run_name or seed.")


# --- flock -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _flock(path: Path, wait: bool):
    """Yield True while holding flock on `path`; False (holding nothing) where the filesystem refuses flock."""
    global _said_flock_refused
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            _refuse(path.parent, handle.read().strip() or "another process")
        except OSError as err:
            if err.errno not in _FLOCK_REFUSED:
                raise
            if not _said_flock_refused:
                print(f"locks: the filesystem of {path.parent} refuses flock ({os.strerror(err.errno)}); run and "
                      f"teacher locks there are lease files (set {LOCKS_ENV}=lease where flock holds within one "
                      "node only)", flush=True)
                _said_flock_refused = True
            yield False
            return
        handle.seek(0)
        handle.truncate()
        handle.write(_holder())
        handle.flush()
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- leases ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _lease(path: Path, wait: bool):
    """Hold the lease file `path` (module docstring), its heartbeat refreshed by a thread while held."""
    token = secrets.token_hex(8)
    while (fd := _claim(path, token)) is None:
        owner = _read(path)
        if owner is None:
            continue  # released between our try and our look: try again
        if (why := _stale(owner)) is not None:
            _break(path, owner, why)
            continue
        if not wait:
            _refuse(path.parent, _describe(owner))
        time.sleep(_POLL_S)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, fd, token, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if _same_file(path, fd):
            path.unlink(missing_ok=True)
        os.close(fd)


def _record(token: str) -> bytes:
    text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace(),
                       "heartbeat": time.time(), "token": token})
    return text.encode().ljust(_RECORD_BYTES)


def _claim(path: Path, token: str) -> int | None:
    """Create the lease file exclusively and write our record; its descriptor, or None when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    except FileExistsError:
        return None
    os.pwrite(fd, _record(token), 0)
    os.fsync(fd)
    return fd


def _read(path: Path) -> dict | None:
    """The lease's record, None when there is no lease. A record being written reads as an unknown holder whose
    heartbeat is the file's modification time."""
    try:
        data, mtime = path.read_bytes(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    with contextlib.suppress(ValueError):
        owner = json.loads(data)
        if isinstance(owner, dict) and {"host", "pid", "heartbeat", "token"} <= set(owner):
            return owner
    return {"host": None, "pid": None, "heartbeat": mtime, "token": None}


def _describe(owner: dict) -> str:
    return f"process {owner['pid']} on {owner['host']}" if owner["pid"] else "another process"


def _stale(owner: dict) -> str | None:
    """Why the lease of `owner` may be taken over, or None while its holder lives."""
    here = owner["host"] == socket.gethostname() and owner.get("pid_namespace") == _pid_namespace()
    if here and owner["pid"] and _pid_namespace() is not None and not process_alive(owner["pid"]):
        return "that process no longer exists"
    age = time.time() - owner["heartbeat"]
    if age > LEASE_S:
        return f"its last heartbeat was {age:.0f} s ago (a lease expires after {LEASE_S:.0f} s)"
    return None


def _pid_namespace() -> str | None:
    """This process's pid namespace: two containers of one host may share its name but not their pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_alive(pid: int) -> bool:
    """A process of this id exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _break(path: Path, owner: dict, why: str) -> None:
    """Remove a stale lease, one contender at a time (the one that creates `<lease>.break`), so that a lease
    claimed afresh by another contender meanwhile is never removed. A breaker that died mid-break leaves a
    `.break` file, itself removed once older than the lease."""
    breaker = path.with_name(path.name + ".break")
    fd = _claim(breaker, secrets.token_hex(8))
    if fd is None:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - breaker.stat().st_mtime > LEASE_S:
                breaker.unlink()
        time.sleep(_POLL_S)
        return
    try:
        if _read(path) == owner:  # still the stale record we judged, not a fresh claim
            print(f"locks: taking over the lease of {path.parent} from {_describe(owner)}: {why}", flush=True)
            path.unlink(missing_ok=True)
    finally:
        breaker.unlink(missing_ok=True)
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    """Whether `path` is still the lease file we created (not removed, not taken over)."""
    try:
        named, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _heartbeat(path: Path, fd: int, token: str, stop: threading.Event) -> None:
    """Rewrite the lease's record every `_BEAT_S` seconds, in place; stop, saying so, once it is no longer ours."""
    while not stop.wait(_BEAT_S):
        if not _same_file(path, fd):
            print(f"locks: warning: the lease of {path.parent} was taken over while this process held it "
                  f"(no heartbeat for more than {LEASE_S:.0f} s); another process may now be writing there",
                  flush=True)
            return
        with contextlib.suppress(OSError):  # a passing filesystem error: the next heartbeat tries again
            os.pwrite(fd, _record(token), 0)
