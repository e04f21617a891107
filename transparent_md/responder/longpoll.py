"""Held GCE long polls (`?wait_for_change=true`): each is answered when its value's ETag
changes or its timeout passes.

A held request keeps its connection (so the per-identity connection cap bounds how
many one guest can hold) and stops reading it. While any request is held, a timer on
the serving loop looks at the store every CHECK_S: a record changed through the admin
API, a file write or the fleet watch reaches its long polls within that, and no timer
runs while nothing is held.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio

    from transparent_md.store import Store

# How often held polls look at the store: well inside the second a client expects.
CHECK_S = 0.25


class Held(Protocol):
    """A connection holding a long poll (a `MetadataProtocol`)."""

    def recheck(self, snapshot: object, now: float) -> bool:
        """Answer if the value changed or the time is up; True once answered."""


class LongPolls:
    """The held requests of one serving loop."""

    def __init__(self, store: Store, loop_of: callable) -> None:
        self._store = store
        self._loop_of = loop_of  # the loop is known only once the responder starts
        self._held: set[Held] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, connection: Held) -> None:
        self._held.add(connection)
        loop = self._loop_of()
        if self._timer is None and loop is not None:
            self._timer = loop.call_later(CHECK_S, self.check)

    def drop(self, connection: Held) -> None:
        self._held.discard(connection)

    def check(self) -> None:
        """Look once at the store for every held request (the timer's, or a test's)."""
        self._timer = None
        if not self._held:
            return
        snapshot, now = self._store.snapshot(), time.monotonic()
        for connection in list(self._held):
            if connection.recheck(snapshot, now):
                self._held.discard(connection)
        loop = self._loop_of()
        if self._held and loop is not None:
            self._timer = loop.call_later(CHECK_S, self.check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held.clear()
