"""What one guest may take from the responder: connections, requests, time, bytes.

Every default is far above what an honest guest does and far below what it takes for
one guest to starve another. For scale: cloud-init's whole boot is ~45 requests, each
on a fresh connection, one after another, within about a second; an SDK keeps a pool
of at most ~10 connections and refreshes credentials a few times an hour.
"""

from __future__ import annotations

from dataclasses import dataclass

# Open connections one guest (port, MAC, IP) may hold at once. cloud-init uses one at a
# time and an SDK pool about ten, but a VM running many containers (a Kubernetes node
# whose pods all fetch credentials at start) opens a few hundred at once through one
# interface; 256 holds that, while one guest's 20,000 idle sockets stay impossible.
DEFAULT_MAX_CONNS_PER_IDENTITY = 256
# Open connections all identities behind one port may hold: a guest with a few
# secondary addresses (each its own identity) fits four full identities.
DEFAULT_MAX_CONNS_PER_PORT = 1024
# Connections whose shadow address resolves to no guest (a slot released under a
# connection, a stray packet): they only ever get 404, so fewer may wait at once.
DEFAULT_MAX_CONNS_UNKNOWN = 256
# Requests on one keep-alive connection before it is closed, as nginx's
# keepalive_requests (same default): clients reconnect transparently.
DEFAULT_KEEPALIVE_REQUESTS = 1000
# Lifetime of a keep-alive connection: the reply after this ends it. Five minutes is
# far beyond any crawl, and lets no connection stay forever with a GET every 20 s.
DEFAULT_KEEPALIVE_TIME_S = 300.0
# A request head must complete this long after its first byte (nginx
# client_header_timeout is 60 s; a metadata request head is ~100 bytes sent at once).
DEFAULT_HEADER_TIMEOUT_S = 10.0
# Per-identity request rate: a token bucket as AWS throttles each interface. 200/s
# sustained is >100x what a booting guest averages; a burst of 400 holds about nine
# whole cloud-init crawls at once, so only a flood ever waits.
DEFAULT_REQUEST_RATE = 200.0
DEFAULT_REQUEST_BURST = 400
# Open file descriptors kept free for everything that is not a guest connection
# (store, metrics, stats files, BPF maps): accepting pauses before they run out.
DEFAULT_FD_RESERVE = 64
# How long accepting pauses when the descriptor budget is reached.
DEFAULT_ACCEPT_PAUSE_S = 0.25
# After an error reply (400, 413, 431, 429...) input is read and discarded for at
# most this long / this many bytes after our FIN, so the client reads the status
# instead of a reset (nginx's lingering_close does the same).
DEFAULT_LINGER_S = 2.0
DEFAULT_LINGER_BYTES = 1 << 20
# Reply bytes one connection may hold unsent in the responder's memory. Past it, the
# connection's further (pipelined) requests wait unread until its output drains to a
# quarter of it: a guest that asks without reading holds this, plus one reply, per
# connection. Twice the largest user-data (the largest reply) fits.
DEFAULT_MAX_UNSENT_BYTES = 32 * 1024
# How long a connection's output may stay unsent (in the responder's memory, the
# socket being full) before the connection is reset, whatever the peer's window and
# whether or not it is already closing: an honest client takes its reply at once.
DEFAULT_SEND_TIMEOUT_S = 10.0

# "No limit" for the counts above: more than any process could ever reach.
UNLIMITED = 1 << 40
# Limits an operator may switch off with 0 on the command line (`from_flags`).
_ZERO_IS_OFF = frozenset({"max_conns_per_identity", "max_conns_per_port",
                          "max_conns_unknown", "keepalive_requests", "keepalive_time_s",
                          "header_timeout_s", "request_rate", "request_burst",
                          "max_unsent_bytes", "send_timeout_s"})


@dataclass(frozen=True)
class ResponderLimits:
    """The responder's defences against one guest starving the others."""

    max_conns_per_identity: int = DEFAULT_MAX_CONNS_PER_IDENTITY
    max_conns_per_port: int = DEFAULT_MAX_CONNS_PER_PORT
    max_conns_unknown: int = DEFAULT_MAX_CONNS_UNKNOWN
    keepalive_requests: int = DEFAULT_KEEPALIVE_REQUESTS
    keepalive_time_s: float = DEFAULT_KEEPALIVE_TIME_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    request_rate: float = DEFAULT_REQUEST_RATE
    request_burst: int = DEFAULT_REQUEST_BURST
    fd_reserve: int = DEFAULT_FD_RESERVE
    accept_pause_s: float = DEFAULT_ACCEPT_PAUSE_S
    linger_s: float = DEFAULT_LINGER_S
    linger_bytes: int = DEFAULT_LINGER_BYTES
    max_unsent_bytes: int = DEFAULT_MAX_UNSENT_BYTES
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S

    @classmethod
    def off(cls) -> ResponderLimits:
        """Per-guest caps, rate and keep-alive limits out of the way (benchmarks, the
        "protections off" column); the time limits and fd budget stay, as before them."""
        return cls(max_conns_per_identity=UNLIMITED, max_conns_per_port=UNLIMITED,
                   max_conns_unknown=UNLIMITED, keepalive_requests=UNLIMITED,
                   keepalive_time_s=float(UNLIMITED), request_rate=float(UNLIMITED),
                   request_burst=UNLIMITED)

    @classmethod
    def from_flags(cls, **values: float) -> ResponderLimits:
        """Limits from command-line values where 0 means "no limit" (for the CLI)."""
        unlimited = {name: (UNLIMITED if name in _ZERO_IS_OFF and value == 0 else value)
                     for name, value in values.items()}
        return cls(**unlimited)

    def __post_init__(self) -> None:
        for name in ("max_conns_per_identity", "max_conns_per_port", "max_conns_unknown",
                     "keepalive_requests", "request_burst", "max_unsent_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("keepalive_time_s", "header_timeout_s", "request_rate",
                     "accept_pause_s", "linger_s", "send_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.fd_reserve < 0 or self.linger_bytes < 0:
            raise ValueError("fd_reserve and linger_bytes must not be negative")
