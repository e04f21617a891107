"""What SQLite's failures of a store file mean to an operator, each in one line.

sqlite3 reports a damaged file, a full disk and a lock held too long as exceptions
whose text names neither the file nor what to do; the CLI would print a traceback and
the admin API a bare 500. `store_fault` turns each into the store error that says it
(`StoreCorrupted`, `DiskFull`, `StoreBusy`), and leaves anything else alone.
"""

from __future__ import annotations

import errno
import sqlite3

from transparent_md.errors import UserError
from transparent_md.store.errors import DiskFull, StoreBusy, StoreCorrupted

# SQLite's primary result codes (the low byte of an extended code).
_BUSY = 5
_LOCKED = 6
_CORRUPT = 11
_FULL = 13
_NOTADB = 26
# The texts sqlite3 gives when the code is not at hand (e.g. a failed executescript).
_CORRUPT_TEXTS = ("malformed", "file is not a database", "file is encrypted")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def store_fault(path: str, exc: BaseException, busy_wait_ms: int = 0) -> UserError | None:
    """The one-line store error `exc` stands for, or None if it is none of these."""
    if isinstance(exc, OSError):
        return DiskFull(path) if exc.errno in _FULL_ERRNOS else None
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary in (_CORRUPT, _NOTADB) or any(t in text for t in _CORRUPT_TEXTS):
        return StoreCorrupted(path, text)
    if primary == _FULL or "disk is full" in text:
        return DiskFull(path)
    if primary in (_BUSY, _LOCKED) or "database is locked" in text:
        return StoreBusy(path, busy_wait_ms)
    return None


__all__ = ["store_fault"]
