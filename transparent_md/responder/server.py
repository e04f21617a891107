"""The responder the `run` daemon starts: a listening socket served by MetadataProtocol.

The daemon owns the socket (it binds it inside its own network namespace) and the
event loop (uvloop); this module starts accepting, the sweeper that enforces the time
limits (`state`) and the store's file checks.
"""

from __future__ import annotations

import asyncio
import socket

from transparent_md.responder.accepting import Listener, descriptor_budget
from transparent_md.responder.access_log import AccessLog
from transparent_md.responder.connections import Connections
from transparent_md.responder.limits import ResponderLimits
from transparent_md.responder.metrics import ResponderStats, StatsCollector
from transparent_md.responder.protocol import MetadataProtocol
from transparent_md.responder.state import DEFAULT_IDLE_TIMEOUT, Resolver, ResponderState
from transparent_md.responder.tokens import DEFAULT_TOKEN_HOP_LIMIT
from transparent_md.store import Store

__all__ = ["Resolver", "Responder"]

# A store asking to be checked more often than this (a test's 0 s) is not worth a
# timer that fires at every loop iteration.
STORE_CHECK_FLOOR_S = 0.1

class Responder:
    """Serve instance metadata on an already listening TCP socket."""

    def __init__(self, store: Store, resolver: Resolver, *,
                 token_hop_limit: int = DEFAULT_TOKEN_HOP_LIMIT,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 token_secret: bytes | None = None,
                 limits: ResponderLimits | None = None,
                 access_log: AccessLog | None = None) -> None:
        if not 1 <= token_hop_limit <= 255:
            raise ValueError("token_hop_limit must be 1..255 (an IP TTL)")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.state = ResponderState(store, resolver, token_hop_limit, token_secret, limits,
                                    idle_timeout, access_log=access_log)
        self.idle_timeout = idle_timeout
        self._sweeper: asyncio.TimerHandle | None = None
        self._store_checker: asyncio.TimerHandle | None = None
        self._connections: Connections | None = None

    @property
    def stats(self) -> ResponderStats:
        return self.state.stats

    @property
    def limits(self) -> ResponderLimits:
        return self.state.limits

    def collector(self, others=None) -> StatsCollector:
        """A prometheus_client collector for this responder's counters (plus `others`)."""
        return StatsCollector(self.state.stats, others)

    async def start(self, sock: socket.socket) -> Listener:
        """Start serving `sock` (bound and listening) on the running loop.

        Returns the `Listener`; its close() stops accepting (the caller closes `sock`).
        """
        loop = asyncio.get_running_loop()
        state = self.state
        state.store.snapshot()  # fail now, not on the first guest, if the store is bad
        state.loop = loop
        limits = state.limits

        def paused() -> None:
            state.stats.accept_paused += 1

        def restarted() -> None:
            state.stats.accept_restarted += 1

        self._connections = connections = Connections(
            loop, state.raw_calls, high_water=limits.max_unsent_bytes, events=state.events)
        listener = Listener(loop, sock, lambda: MetadataProtocol(state), connections,
                            limits.accept_pause_s, lambda: state.stats.open_connections,
                            descriptor_budget(limits.fd_reserve), paused, restarted)
        state.listener = listener
        await listener.start()
        self._schedule_sweep(loop)
        # SQLite stores (what serving opens) look for a replaced file on this loop's
        # timer instead of reading the clock in every request's snapshot().
        by_timer = getattr(state.store, "check_files_by_timer", None)
        if by_timer is not None:
            self._schedule_store_checks(loop, max(by_timer(), STORE_CHECK_FLOOR_S))
        # A change is read by the store's loader thread; this loop only swaps it in.
        in_background = getattr(state.store, "load_snapshots_in_background", None)
        if in_background is not None:
            in_background()
        return listener

    def close(self) -> None:
        """Stop the sweeper and close every open connection."""
        for timer in (self._sweeper, self._store_checker):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._store_checker = None
        self.state.long_polls.close()
        for connection in list(self.state.connections):
            connection.close()
        if self._connections is not None:
            self._connections.close()
            self._connections = None
        if self.state.access_log is not None:
            self.state.access_log.flush()

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(self.state.sweep_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.state.sweep()
        self._schedule_sweep(loop)

    def _schedule_store_checks(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._store_checker = loop.call_later(interval, self._check_store_files, loop,
                                              interval)

    def _check_store_files(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._schedule_store_checks(loop, interval)  # first: a failing check must not stop them
        self.state.store.check_files()
