"""Identity policy: which record answers a guest, and which records would be ambiguous.

A guest is matched by MAC first (respecting any bridge/port/IP the record is bound
to), else by IP on its bridge among records that carry no MAC. Where several records
could answer, the most specific one (most bound fields) wins; two equally specific
records that could answer the same guest are refused when written, so the answer never
depends on ordering. An unknown guest gets None and learns nothing about others.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from transparent_md.identity import Guest


class Bound(Protocol):
    """What the policy reads of a record: an `Instance`, or a snapshot's `Binding`."""

    @property
    def instance_id(self) -> str: ...
    @property
    def mac(self) -> str | None: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def bridge(self) -> str | None: ...
    @property
    def port(self) -> str | None: ...


E = TypeVar("E", bound=Bound)
R = TypeVar("R", bound=Bound)


def specificity(record: Bound) -> int:
    """How many optional bindings narrow the record; the narrowest match wins."""
    return sum(x is not None for x in (record.ip, record.bridge, record.port))


def accepts(record: Bound, guest: Guest) -> bool:
    """Every field the record binds must equal what the datapath saw."""
    return (
        (record.mac is None or record.mac == guest.mac)
        and (record.ip is None or record.ip == guest.ip)
        and (record.bridge is None or record.bridge == guest.bridge)
        and (record.port is None or record.port == guest.port)
    )


def could_overlap(a: Bound, b: Bound) -> bool:
    """True if some guest would be accepted by both records."""
    return all(
        x is None or y is None or x == y
        for x, y in ((a.mac, b.mac), (a.ip, b.ip), (a.bridge, b.bridge), (a.port, b.port))
    ) and (a.mac is None) == (b.mac is None)


def find_conflict(records: Iterable[R]) -> tuple[R, R] | None:
    """Two records the policy could not tell apart for some guest, if any."""
    buckets: dict[object, list[R]] = {}
    for record in records:
        # MAC records only meet records with the same MAC; IP-only records meet by IP.
        buckets.setdefault(("mac", record.mac) if record.mac else ("ip", record.ip), []).append(
            record
        )
    for group in buckets.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if specificity(a) == specificity(b) and could_overlap(a, b):
                    return a, b
    return None


class IdentityIndex(Generic[E]):
    """Lookup tables built once per store snapshot; `match` is a dict hit plus a filter."""

    __slots__ = ("_by_mac", "_by_ip")

    def __init__(self, entries: Iterable[E]) -> None:
        by_mac: dict[str, list[E]] = {}
        by_ip: dict[str, list[E]] = {}
        for entry in entries:
            if entry.mac is not None:
                by_mac.setdefault(entry.mac, []).append(entry)
            else:
                by_ip.setdefault(entry.ip or "", []).append(entry)
        key = lambda e: -specificity(e)  # noqa: E731 - sort key, narrowest first
        self._by_mac = {k: tuple(sorted(v, key=key)) for k, v in by_mac.items()}
        self._by_ip = {k: tuple(sorted(v, key=key)) for k, v in by_ip.items()}

    def match(self, guest: Guest) -> E | None:
        """The record that answers `guest`, or None when no record is for it."""
        for entry in self._by_mac.get(guest.mac, ()):
            if accepts(entry, guest):
                return entry
        for entry in self._by_ip.get(guest.ip, ()):
            if accepts(entry, guest):
                return entry
        return None


def exposure_warning(record: Bound) -> str | None:
    """Why a record holding secrets but no port binding can leak, and how to close it.

    A MAC-bound record is locked to the port that asks first; a guest that copies the
    MAC and IP and asks before the victim ever does gets the victim's record.
    """
    secrets = [name for name, present in (
        ("IAM credentials", getattr(record, "iam", None) is not None),
        ("user-data", getattr(record, "user_data", None) is not None),
    ) if present]
    if not secrets or record.port is not None:
        return None
    return (
        f"record {record.instance_id} carries {' and '.join(secrets)} but is not bound to "
        "a port: a guest that copies its MAC and IP and asks before it ever does is "
        "answered with them. Bind it to its port when the VM starts (--port, port:), or "
        "turn on the hypervisor's MAC anti-spoofing (libvirt clean-traffic, ebtables)")
