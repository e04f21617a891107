"""One daemon per (network namespace, --name): an flock on a file in its state directory.

The lock file holds the owner's PID, so a refused second daemon can say whom it met.
The kernel drops the lock when the owner dies, however it dies: no stale-lock cleanup.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from transparent_md.errors import UserError
from transparent_md.names import DaemonNames


class DaemonLock:
    """Held for the daemon's whole life; `acquire` refuses when another daemon holds it."""

    def __init__(self, names: DaemonNames) -> None:
        self.names = names
        self._fd: int | None = None

    def acquire(self) -> None:
        path = self.names.lock_file
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise UserError(
                f"another transparent-md daemon named {self.names.name!r} already runs in "
                f"this network namespace (pid {holder_pid(path) or 'unknown'}); stop it "
                "first, or give this one another --name and other bridges"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def holder_pid(path: Path) -> int | None:
    """The PID written by whoever holds (or last held) the lock at `path`."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_held(path: Path) -> bool:
    """True while a live daemon holds the lock at `path`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
