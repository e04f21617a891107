"""Give memory back after a connection flood ends.

Thousands of connections leave freed Python objects and malloc arenas behind; CPython
reuses them but glibc keeps the pages, so RSS stays at the flood's peak. When open
connections fall well below their recent peak, a full collection plus glibc's
malloc_trim(0) returns the free pages (a few ms; rate-limited).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

# Reclaim only after at least this many connections closed since the peak: smaller
# swings are normal traffic and leave little to return.
FLOOD_MIN_CONNECTIONS = 256
# ... and once open connections are at most this fraction of the peak.
REMAINING_FRACTION = 0.25
# At most one reclaim per this many seconds (each costs a full gc pass).
MIN_INTERVAL_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim): gc alone
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryReclaimer:
    """`note_open(n)` as connections open; `maybe_reclaim(n)` from a periodic sweep."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._trim = _malloc_trim()
        self.peak = 0
        self._last = -MIN_INTERVAL_S
        self.reclaims = 0

    def maybe_reclaim(self, open_connections: int) -> bool:
        """Reclaim if a flood has ended since the last look; True if it did."""
        peak = self.peak
        if (peak - open_connections < FLOOD_MIN_CONNECTIONS
                or open_connections > peak * REMAINING_FRACTION):
            return False
        now = self._clock()
        if now - self._last < MIN_INTERVAL_S:
            return False
        self._last = now
        self.peak = open_connections
        self.reclaim()
        return True

    def reclaim(self) -> None:
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.reclaims += 1
