"""Notice that a file was replaced (mv, rsync) or removed.

`snapshot()` runs on every request (75k/s on a keep-alive benchmark); an `os.stat`
there would cost ~1.7 us, a quarter of the request. So `check()` runs once per
CHECK_INTERVAL: from the serving responder's loop timer, or, for any other reader of
the store, from snapshot() behind a monotonic-clock compare (~45 ns).
"""

from __future__ import annotations

import enum
import os

# How stale a replaced store may be served: long against ~1.7 us per stat, short
# against an operator who just moved a new file into place.
CHECK_INTERVAL = 1.0


class FileState(enum.Enum):
    SAME = "same"
    REPLACED = "replaced"  # another inode is at the path now
    MISSING = "missing"


def identity(path: str) -> tuple[int, int]:
    """(device, inode) of `path` now; raises OSError if it is not there."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


class FileWatch:
    """Compares the inode at `path` with the one that was opened."""

    __slots__ = ("path", "opened")

    def __init__(self, path: str, opened: tuple[int, int]) -> None:
        self.path = path
        self.opened = opened

    def check(self) -> FileState:
        try:
            now = identity(self.path)
        except FileNotFoundError:
            return FileState.MISSING
        return FileState.SAME if now == self.opened else FileState.REPLACED
