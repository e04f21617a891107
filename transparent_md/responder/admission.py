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

    def admit(self, guest: Guest | None, key: Hashable) -> str | None:
        """Count a new connection of `guest` (identity `key`); or say why it is refused."""
        if guest is None:
            if self.unknown >= self._unknown_cap:
                return REFUSED_UNKNOWN
            self.unknown += 1
            return None
        held = self.per_identity.get(key, 0)
        if held >= self._per_identity_cap:
            return REFUSED_IDENTITY
        on_port = self.per_port.get(guest.ifindex, 0)
        if on_port >= self._per_port_cap:
            return REFUSED_PORT
        self.per_identity[key] = held + 1
        self.per_port[guest.ifindex] = on_port + 1
        return None

    def release(self, guest: Guest | None, key: Hashable) -> None:
        """Forget one admitted connection of `guest` (identity `key`): it closed."""
        if guest is None:
            self.unknown -= 1
            return
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
    """`rate` requests a second with bursts of up to `burst`, as a token bucket allows.

    Kept as GCRA (the "virtual scheduling" form of a token bucket): one theoretical
    arrival time instead of a token count, so a request costs one clock read and
    two comparisons, and the answer is the same as a token bucket's.
    """

    __slots__ = ("_tat", "_interval", "_tolerance", "_clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._tat = 0.0  # when the bucket will be full again; in the past: full now

    def take(self) -> bool:
        """Take a token; False (nothing taken) when the bucket is empty."""
        now = self._clock()
        tat = self._tat
        if tat < now:
            tat = now
        elif tat - now > self._tolerance:
            return False
        self._tat = tat + self._interval
        return True

    def is_full(self, now: float) -> bool:
        return self._tat <= now


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

    def bucket_for(self, key: Hashable) -> TokenBucket:
        """The bucket of identity `key` (see `identity_of`), made full if new."""
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
