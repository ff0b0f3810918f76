"""One server per data folder: an exclusive `flock` on `<data_dir>/server.lock`.

Why: two servers on one folder each believe they own its runs: the second fails the first's
running and queued runs as "interrupted" while the first's worker keeps writing after that
final status. flock, not a pid file: the kernel releases the lock when its holder dies
(crash, SIGKILL, power loss of a container), so no stale lock is ever left to clean up. The
file also records who holds it (pid, host, port), so a refused second server can say.

Starting a server for a folder (the notebook launcher) is serialised by a second lock,
`<data_dir>/launch.lock`, held while one caller starts it and waits for its health: a caller
that comes second (another thread, another kernel) waits there, then finds the first one's
server in `server.lock` and uses it instead of starting another that would lose the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import time
from pathlib import Path

LOCK_NAME = "server.lock"
LAUNCH_NAME = "launch.lock"
LAUNCH_POLL_S = 0.05


class FolderHeld(ValueError):
    """Another live server holds the data folder (a ValueError: the CLI prints one line)."""


class FolderLock:
    """The data folder's server lock; `acquire` is idempotent for the holder."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, host: str, port: int) -> None:
        """Take the lock or raise FolderHeld naming the holder."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(self.path)
            os.close(fd)
            raise FolderHeld(f"data_dir: {self.path.parent} is in use by another sparsescope "
                             f"server ({holder}); stop it or pass another --data-dir") from None
        record = json.dumps({"pid": os.getpid(), "host": platform.node(), "port": port,
                             "bind": host, "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # the file stays: unlinking it would race a new holder
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None


def _describe(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "holder unknown"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, "
            f"serving {holder.get('bind')}:{holder.get('port')}")


def folder_held(data_dir: str | Path) -> bool:
    """Whether a live server on this host holds the folder, as its lock file records (read,
    not locked: a probe's lock, however brief, could refuse a server starting that moment)."""
    try:
        holder = json.loads((Path(data_dir) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return False
    pid = holder.get("pid") if isinstance(holder, dict) else None
    if not isinstance(pid, int) or pid <= 0 or holder.get("host") != platform.node():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # a crashed holder's record: the kernel has dropped its lock
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def launching(data_dir: str | Path, timeout_s: float):
    """Held while this caller starts the folder's server (see the module's docstring). flock
    on a descriptor of its own: threads of one process wait for each other as processes do.
    TimeoutError when another caller holds it for `timeout_s`."""
    path = Path(data_dir) / LAUNCH_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"data_dir: another caller has been starting the server "
                                       f"of {path.parent} for {timeout_s:g} s") from None
                time.sleep(LAUNCH_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock
