"""The responder the `run` daemon starts: a listening socket served by MetadataProtocol.

The daemon owns the socket (it binds it inside its own network namespace) and the
event loop (uvloop); this module only wires store, resolver, tokens and sweeper.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from transparent_md.identity import Guest
from transparent_md.responder.dispatch import Dispatcher
from transparent_md.responder.metrics import ResponderStats, StatsCollector
from transparent_md.responder.protocol import MetadataProtocol
from transparent_md.responder.tokens import TokenAuthority
from transparent_md.store import Store

Resolver = Callable[[str], Guest | None]
"""Peer IP string (the shadow address the datapath gave the connection) -> Guest."""

# AWS's default PUT response hop limit: the token reply cannot leave the host.
DEFAULT_TOKEN_HOP_LIMIT = 1
DEFAULT_IDLE_TIMEOUT = 30.0


class ResponderState:
    """What every connection of one responder shares."""

    def __init__(self, store: Store, resolver: Resolver, token_hop_limit: int,
                 token_secret: bytes | None = None) -> None:
        self.store = store
        self.resolver = resolver
        self.token_hop_limit = token_hop_limit
        self.tokens = TokenAuthority(secret=token_secret)
        self.dispatcher = Dispatcher(store, self.tokens)
        self.stats = ResponderStats()
        self.connections: set[MetadataProtocol] = set()


class Responder:
    """Serve instance metadata on an already listening TCP socket."""

    def __init__(self, store: Store, resolver: Resolver, *,
                 token_hop_limit: int = DEFAULT_TOKEN_HOP_LIMIT,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 token_secret: bytes | None = None) -> None:
        if not 1 <= token_hop_limit <= 255:
            raise ValueError("token_hop_limit must be 1..255 (an IP TTL)")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.state = ResponderState(store, resolver, token_hop_limit, token_secret)
        self.idle_timeout = idle_timeout
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def stats(self) -> ResponderStats:
        return self.state.stats

    def collector(self, others=None) -> StatsCollector:
        """A prometheus_client collector for this responder's counters (plus `others`)."""
        return StatsCollector(self.state.stats, others)

    async def start(self, sock: socket.socket) -> asyncio.AbstractServer:
        """Start serving `sock` (bound and listening) on the running loop."""
        loop = asyncio.get_running_loop()
        self.state.store.snapshot()  # fail now, not on the first guest, if the store is bad
        server = await loop.create_server(lambda: MetadataProtocol(self.state), sock=sock)
        self._schedule_sweep(loop)
        return server

    def close(self) -> None:
        """Stop the idle sweeper and close every open connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.state.connections):
            connection.close()

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        for connection in list(self.state.connections):
            if connection.close_if_idle():
                self.state.stats.connections_idle_closed += 1
        self._schedule_sweep(loop)
