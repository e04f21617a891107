"""A tiny shared stamp file that tells a running responder "the store changed".

`PRAGMA data_version` costs about 3.5 us from Python, half the CPU budget of a whole
keep-alive request. Every writer instead stamps fresh random bytes into
`<db>.generation` *after* its commit; readers compare those 8 bytes with the ones they
last saw. Any change of the stamp means "reload"; a reload reads only committed data,
so a stamp seen early can never hide a change, and a read torn by a concurrent bump is
just one more change.

The stamp is read with `pread`, never through a shared memory map: a map of a file
that something truncates (an operator's `truncate`, a full disk during a rewrite) kills
the reading process with SIGBUS on its next access, and the responder would die with
its filters still attached. A short or empty file reads as a stamp of its own (one
reload), and the next writer's bump makes it whole again.
"""

from __future__ import annotations

import logging
import os

from transparent_md.store.private import PRIVATE_FILE_MODE

log = logging.getLogger(__name__)

STAMP_BYTES = 8


class GenerationFile:
    """Writer side `bump()`, reader side `current()`; both safe across processes."""

    __slots__ = ("path", "_fd", "_short_logged")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        self._short_logged = False
        try:
            if os.fstat(self._fd).st_size < STAMP_BYTES:
                self.bump()
        except BaseException:
            os.close(self._fd)
            raise

    def current(self) -> bytes:
        """The stamp now: 8 bytes, or fewer if the file was cut short (still a stamp)."""
        stamp = os.pread(self._fd, STAMP_BYTES, 0)
        if len(stamp) < STAMP_BYTES and not self._short_logged:
            self._short_logged = True
            log.warning("the store's generation file %s was cut short (%d bytes): changes "
                        "are still seen; the next write restores it", self.path, len(stamp))
        return stamp

    def bump(self) -> None:
        if os.pwrite(self._fd, os.urandom(STAMP_BYTES), 0) == STAMP_BYTES:
            self._short_logged = False

    def identity(self) -> tuple[int, int]:
        """(device, inode) of the file this object reads (see store.watch)."""
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        os.close(self._fd)
