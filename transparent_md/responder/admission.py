"""Who may open a connection and send a request: connection caps and request buckets.

An identity is what the datapath tells guests apart by: (port ifindex, MAC, IP). A guest
may add identities by using several addresses, so connections are also capped per port;
connections from shadow addresses that resolve to no guest share one cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from transparent_md.identity import Guest
from transparent_md.responder.limits import ResponderLimits

REFUSED_IDENTITY = "identity"
REFUSED_PORT = "port"
REFUSED_UNKNOWN = "unknown"
REFUSAL_REASONS = (REFUSED_IDENTITY, REFUSED_PORT, REFUSED_UNKNOWN)


def identity_of(guest: Guest | None) -> Hashable:
    """The key caps and buckets count under; all unknown guests share None."""
    if guest is None:
        return None
    return (guest.ifindex, guest.mac, guest.ip)


class ConnectionCaps:
    """Open connections per identity, per port and of unknown guests, against caps."""

    def __init__(self, limits: ResponderLimits) -> None:
        self._per_identity_cap = limits.max_conns_per_identity
        self._per_port_cap = limits.max_conns_per_port
        self._unknown_cap = limits.max_conns_unknown
        self.per_identity: dict[Hashable, int] = {}
        self.per_port: dict[int, int] = {}
        self.unknown = 0

    def admit(self, guest: Guest | None) -> str | None:
        """Count a new connection of `guest`; or return why it is refused (not counted)."""
        if guest is None:
            if self.unknown >= self._unknown_cap:
                return REFUSED_UNKNOWN
            self.unknown += 1
            return None
        key = identity_of(guest)
        held = self.per_identity.get(key, 0)
        if held >= self._per_identity_cap:
            return REFUSED_IDENTITY
        on_port = self.per_port.get(guest.ifindex, 0)
        if on_port >= self._per_port_cap:
            return REFUSED_PORT
        self.per_identity[key] = held + 1
        self.per_port[guest.ifindex] = on_port + 1
        return None

    def release(self, guest: Guest | None) -> None:
        """Forget one admitted connection of `guest` (it closed)."""
        if guest is None:
            self.unknown -= 1
            return
        key = identity_of(guest)
        _decrement(self.per_identity, key)
        _decrement(self.per_port, guest.ifindex)


def _decrement(counts: dict, key: Hashable) -> None:
    """Count one less; a key at zero is removed so the dicts hold only open identities."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class TokenBucket:
    """`rate` tokens a second up to `burst`; a request takes one."""

    __slots__ = ("tokens", "stamp", "_rate", "_burst", "_clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self) -> bool:
        """Take a token; False (nothing taken) when the bucket is empty."""
        now = self._clock()
        tokens = self.tokens + (now - self.stamp) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def is_full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self._rate >= self._burst


class RequestBuckets:
    """One token bucket per identity, shared by all its connections.

    Bounded: `sweep` drops the buckets of identities with no open connection whose
    bucket has refilled (a new bucket would be identical), so memory follows the
    identities actually connected.
    """

    def __init__(self, limits: ResponderLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = limits.request_rate
        self._burst = limits.request_burst
        self._clock = clock
        self.buckets: dict[Hashable, TokenBucket] = {}

    def bucket_for(self, guest: Guest | None) -> TokenBucket:
        key = identity_of(guest)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        return bucket

    def sweep(self, connected: dict[Hashable, int], unknown_connected: bool) -> None:
        """Drop full buckets of identities that hold no connection now."""
        now = self._clock()
        for key in [k for k, b in self.buckets.items() if b.is_full(now)]:
            if key is None:
                if not unknown_connected:
                    del self.buckets[key]
            elif key not in connected:
                del self.buckets[key]
