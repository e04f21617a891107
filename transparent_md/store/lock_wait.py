"""How long a serving loop may wait for another process's lock on the store file.

SQLite's own busy handler sleeps in steps of up to 100 ms and, against a writer that
commits back to back, often misses the short gaps between commits. A serving store
instead tries without waiting and polls in sub-millisecond steps, for at most
MAX_WAIT_S: an ordinary commit (a few ms of exclusive lock) costs a guest nothing. A
lock still held after that is held for long (an import, a process stuck in a
transaction): for the next PATIENCE_LOST_S, reads try once and do not wait, so the
loop loses MAX_WAIT_S per PATIENCE_LOST_S at most, and the guests whose records must be
read meanwhile get 503.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The longest one read waits: well under the 100 ms a guest already served may be
# delayed by the store at worst, well over a commit's exclusive lock.
MAX_WAIT_S = 0.05
# One poll step: shorter than the gap between two back-to-back commits.
POLL_S = 0.0005
# After a read waited MAX_WAIT_S in vain, reads do not wait for this long.
PATIENCE_LOST_S = 1.0


class LockWait:
    """`start()` a read; `pause()` before another try: sleeps one step and returns True
    while this read may still wait, else returns False (give up: answer 503)."""

    __slots__ = ("_clock", "_sleep", "_impatient_until", "waited")

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._impatient_until = 0.0
        self.waited = 0.0  # by the current read, for its message

    def start(self) -> None:
        self.waited = 0.0

    def pause(self) -> bool:
        now = self._clock()
        if now < self._impatient_until:
            return False
        if self.waited + POLL_S > MAX_WAIT_S:
            self._impatient_until = now + PATIENCE_LOST_S
            return False
        self._sleep(POLL_S)
        self.waited += self._clock() - now
        return True


__all__ = ["LockWait", "MAX_WAIT_S", "PATIENCE_LOST_S", "POLL_S"]
