"""An immutable view of the whole store, swapped atomically when the store changes.

A snapshot holds only what identity matching needs (`Binding`: id, revision, MAC, IP,
IPv6 addresses, bridge, port and its link, parked), so thousands of idle records cost
their index and nothing more. The full record of a guest that asks is loaded on demand
as an `Entry` (see `store.cache`), together with whatever the responder prepared for
it (`prepared`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from transparent_md.identity import Guest
from transparent_md.store.policy import IdentityIndex
from transparent_md.store.record import Instance


class Binding:
    """One record as the identity policy sees it; a revision names the whole record."""

    __slots__ = ("instance_id", "revision", "mac", "ip", "bridge", "port", "port_ifindex",
                 "parked", "ipv6")

    def __init__(self, instance_id: str, revision: int, mac: str | None, ip: str | None,
                 bridge: str | None, port: str | None, port_ifindex: int | None = None,
                 parked: bool = False, ipv6: str | tuple[str, ...] | None = None) -> None:
        self.instance_id = instance_id
        self.revision = revision
        self.mac = mac
        self.ip = ip
        # The record's IPv6 addresses; the store's column holds them space-separated.
        self.ipv6 = tuple(ipv6.split()) if isinstance(ipv6, str) else tuple(ipv6 or ())
        self.port_ifindex = port_ifindex
        self.parked = bool(parked)
        # Many records share a bridge (and port names repeat): keep one copy of each.
        self.bridge = sys.intern(bridge) if bridge is not None else None
        self.port = sys.intern(port) if port is not None else None

    def __repr__(self) -> str:
        return f"Binding({self.instance_id!r}, revision={self.revision})"


@dataclass(frozen=True, eq=False, slots=True)
class Entry:
    """One whole record, read in one SELECT (the guest-set password is read live).

    `prepared` is a memo owned by the responder (pre-rendered responses); it lives as
    long as this exact revision of the record stays loaded.
    """

    instance: Instance
    revision: int
    prepared: dict[Any, Any] = field(default_factory=dict)


class Snapshot:
    """The bindings of one committed store state, indexed for the identity policy."""

    __slots__ = ("bindings", "_index")

    def __init__(self, bindings: dict[str, Binding]) -> None:
        self.bindings = bindings
        self._index: IdentityIndex[Binding] = IdentityIndex(bindings.values())

    def updated(self, bindings: dict[str, Binding], gone: list[Binding],
                added: list[Binding]) -> Snapshot:
        """The snapshot of `bindings`, which are these with `gone` out and `added` in:
        the index is updated for those alone instead of built again."""
        snapshot = Snapshot.__new__(Snapshot)
        snapshot.bindings = bindings
        snapshot._index = self._index.with_changes(gone, added)
        return snapshot

    def match(self, guest: Guest) -> Binding | None:
        """The binding of the record that answers `guest` (see `store.policy`), or None."""
        return self._index.match(guest)

