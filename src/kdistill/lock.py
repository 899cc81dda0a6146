"""One writer per run directory: a lock file that names its holder, and that a dead holder does not keep.

Two runs writing into one directory (two seeds started in two terminals) would each overwrite the other's
``summary.json`` and ``config.yaml`` and both exit 0: results silently lost. :func:`run_lock` makes the second
one fail at once, naming the first (PID, host, start time). The lock is a file created with ``O_EXCL`` (atomic
on local file systems); a lock whose process no longer exists on this host is stale and is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from kdistill import dist

LOCK_NAME = ".kdistill.lock"


class RunDirBusy(RuntimeError):
    """Another live run holds the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written right now, or damaged: treated as held by an unknown process


@contextlib.contextmanager
def run_lock(run_dir: Path, enabled: bool | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block (creating the directory). ``enabled`` defaults to "this is
    rank 0" (of a process group already set up, else ``$RANK`` unset or 0): the other ranks of a distributed run
    write nothing, rank 0 holds the lock."""
    if enabled is None:
        enabled = dist.is_main() and int(os.environ.get("RANK", "0")) == 0
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
    }
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _holder(path)
            pid, host = held.get("pid"), held.get("host")
            stale = attempt == 0 and isinstance(pid, int) and host == me["host"] and not _alive(pid)
            if stale:
                path.unlink(missing_ok=True)  # its process is gone: a killed run's leftover
                continue
            who = f"PID {pid} on {host}, started {held.get('started', '?')}" if held else "an unknown process"
            raise RunDirBusy(
                f"run directory {run_dir} is in use by another kdistill run ({who}); wait for it to finish, or give "
                f"this run another name (name=...). If that process is gone (another machine), delete {path}"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        break
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        if created:  # a run that failed before writing anything leaves no empty directory behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive ``flock`` on a directory, for processes of one run sharing work (``--jobs`` workers computing the
    teacher's logits once): released when the block ends or the process dies, and it leaves no file behind."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
