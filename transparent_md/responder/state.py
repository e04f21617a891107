"""What every connection of one responder shares, and the sweeper tick it keeps time by.

`MetadataProtocol` reads this state on every request; the `Responder` (server.py)
creates it and runs its sweeper. Kept apart from both, so neither imports the other.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Protocol

from transparent_md.identity import Guest
from transparent_md.responder.accepting import Listener
from transparent_md.responder.access_log import AccessLog
from transparent_md.responder.admission import ConnectionCaps, RequestBuckets
from transparent_md.responder.dispatch import Dispatcher
from transparent_md.responder.limits import ResponderLimits
from transparent_md.responder.longpoll import LongPolls
from transparent_md.responder.memory import MemoryReclaimer
from transparent_md.responder.metrics import ResponderStats
from transparent_md.responder.prepared import GuestViews
from transparent_md.responder.ratelog import RateLimitedLog
from transparent_md.responder.rawsock import RawSocketCalls
from transparent_md.responder.tokens import TokenAuthority
from transparent_md.store import Store

Resolver = Callable[[str], Guest | None]
"""Peer IP string (the shadow address the datapath gave the connection) -> Guest."""

DEFAULT_IDLE_TIMEOUT = 30.0
# Sweeps per shortest time limit: a limit of T closes between T and T * (1 + 1/2).
SWEEPS_PER_LIMIT = 2

log = logging.getLogger("transparent_md.responder.defences")


class Connection(Protocol):
    """What the sweeper asks of an open connection (a `MetadataProtocol`)."""

    def close_if_stale(self, tick: int) -> str | None: ...

    def close(self) -> None: ...


def ticks_for(seconds: float, sweep_s: float) -> int:
    """Sweeper ticks that cover at least `seconds` whatever tick the clock started in."""
    return math.ceil(seconds / sweep_s - 1e-9) + 1


class ResponderState:
    """What every connection of one responder shares."""

    def __init__(self, store: Store, resolver: Resolver, token_hop_limit: int,
                 token_secret: bytes | None = None, limits: ResponderLimits | None = None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 loop: asyncio.AbstractEventLoop | None = None,
                 access_log: AccessLog | None = None) -> None:
        self.store = store
        self.access_log = access_log
        self.resolver = resolver
        self.token_hop_limit = token_hop_limit
        self.tokens = TokenAuthority(secret=token_secret)
        self.events = RateLimitedLog(log)
        self.dispatcher = Dispatcher(store, self.tokens, self.events)
        self.views = GuestViews(store, self._no_record)
        self.stats = ResponderStats()
        self.connections: set[Connection] = set()
        self.limits = limits = limits or ResponderLimits()
        self.caps = ConnectionCaps(limits)
        self.buckets = RequestBuckets(limits)
        self.reclaimer = MemoryReclaimer()
        self.raw_calls = RawSocketCalls()  # this loop's thread only
        self.loop = loop
        self.long_polls = LongPolls(store, lambda: self.loop)
        self.listener: Listener | None = None
        # Time as sweeper ticks: connections compare ticks instead of reading a clock.
        self.sweep_s = min(idle_timeout, limits.header_timeout_s,
                           limits.send_timeout_s) / SWEEPS_PER_LIMIT
        self.tick = 0
        self.idle_ticks = ticks_for(idle_timeout, self.sweep_s)
        self.header_ticks = ticks_for(limits.header_timeout_s, self.sweep_s)
        self.keepalive_ticks = ticks_for(limits.keepalive_time_s, self.sweep_s)
        # Counted from the first tick that sees output waiting, which is already later
        # than the output began to wait: no extra tick needed to cover the whole timeout.
        self.send_ticks = math.ceil(limits.send_timeout_s / self.sweep_s - 1e-9)

    def _no_record(self, guest: Guest) -> None:
        self.events.warn("no_record", guest, "asks for metadata but no instance record "
                         "matches it (404 on every path)")

    def sweep(self) -> None:
        """Advance the clock one tick and enforce the time limits on every connection."""
        self.tick += 1
        stats = self.stats
        for connection in list(self.connections):
            connection.close_if_stale(self.tick)  # counts what it closes
        self.buckets.sweep(self.caps.per_identity, self.caps.unknown > 0)
        if self.listener is not None:
            self.listener.watch()
        if self.reclaimer.maybe_reclaim(stats.open_connections):
            stats.memory_reclaims += 1
