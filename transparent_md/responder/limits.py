"""What one guest may take from the responder: connections, requests, time, bytes.

The limits an operator sets (`run --max-conns-per-identity`, ...) are declared, with
their defaults and why, in `transparent_md.guest_limits`; the ones below are the
responder's own plumbing.
"""

from __future__ import annotations

from dataclasses import dataclass

from transparent_md.guest_limits import GUEST_LIMITS, default

DEFAULT_MAX_CONNS_PER_IDENTITY = default("max_conns_per_identity")
DEFAULT_MAX_CONNS_PER_PORT = default("max_conns_per_port")
DEFAULT_MAX_CONNS_UNKNOWN = default("max_conns_unknown")
DEFAULT_KEEPALIVE_REQUESTS = default("keepalive_requests")
DEFAULT_KEEPALIVE_TIME_S = default("keepalive_time_s")
DEFAULT_HEADER_TIMEOUT_S = default("header_timeout_s")
DEFAULT_REQUEST_RATE = default("request_rate")
DEFAULT_REQUEST_BURST = default("request_burst")
DEFAULT_MAX_UNSENT_BYTES = default("max_unsent_bytes")
DEFAULT_SEND_TIMEOUT_S = default("send_timeout_s")
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

# "No limit" for the counts above: more than any process could ever reach.
UNLIMITED = 1 << 40
# Limits an operator may switch off with 0 (`from_flags`).
_ZERO_IS_OFF = frozenset(limit.field for limit in GUEST_LIMITS if limit.zero_disables)


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
        """Limits from `run`'s values (guest_limits fields) where 0 means "no limit"."""
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
