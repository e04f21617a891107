"""Identity policy: which record answers a guest, and which records would be ambiguous.

A guest is matched by MAC first (respecting any bridge/port/IP the record is bound
to), else by IP on its bridge among records that carry no MAC.

An IPv6 guest (the datapath saw it ask fd00:ec2::254 or fe80::a9fe:a9fe) is answered
only by records that list IPv6 addresses (`ipv6`): from one of those, where `ipv6`
binds it as `ip` binds an IPv4 guest, or from its link-local address, which no record
lists, when the record has a MAC (then MAC, bridge and port alone say who it is). A
record without `ipv6` serves IPv4 only, so records written before IPv6 keep their
meaning and never become ambiguous. Where several records
could answer, the most specific one (most bound fields) wins; two equally specific
records that could answer the same guest are refused when written, so the answer never
depends on ordering. An unknown guest gets None and learns nothing about others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from transparent_md.identity import Guest
from transparent_md.store.record import secrets_of


class Bound(Protocol):
    """What the policy reads of a record: an `Instance`, or a snapshot's `Binding`."""

    @property
    def instance_id(self) -> str: ...
    @property
    def mac(self) -> str | None: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def ipv6(self) -> tuple[str, ...]: ...
    @property
    def bridge(self) -> str | None: ...
    @property
    def port(self) -> str | None: ...
    @property
    def port_ifindex(self) -> int | None: ...
    @property
    def parked(self) -> bool: ...


E = TypeVar("E", bound=Bound)
R = TypeVar("R", bound=Bound)


def specificity(record: Bound) -> int:
    """How many optional bindings narrow the record; the narrowest match wins."""
    return sum(x is not None for x in (record.ip, record.bridge, record.port))


def serves(record: Bound) -> bool:
    """Whether the record answers anyone at all.

    A parked record (a stopped VM's) answers nobody; nor does one naming a port without
    the link it was bound to (written by an older version, by name only): a name alone
    cannot tell the port it meant from a new one that took the name.
    """
    return not record.parked and (record.port is None or record.port_ifindex is not None)


def serving(record: Bound) -> str:
    """Who the record answers, in the words of docs/records.md "Identity policy"."""
    if record.parked:
        return "parked"
    if record.port is not None:
        if record.port_ifindex is None:
            return "nobody (port bound by name only: bind it again)"
        return f"link {record.port}#{record.port_ifindex}"
    if record.mac is not None:
        return "mac+bridge" if record.bridge is not None else "mac"
    return "ip+bridge"


def is_ipv6(address: str) -> bool:
    return ":" in address


def is_link_local6(address: str) -> bool:
    """fe80::/10, as the datapath spells addresses (compressed, lower case)."""
    return address[:3] in ("fe8", "fe9", "fea", "feb") and address[3:4] != ":"


def _address_accepted(record: Bound, ip: str) -> bool:
    if not is_ipv6(ip):
        return record.ip is None or record.ip == ip
    if is_link_local6(ip):
        return record.mac is not None and bool(record.ipv6)
    return ip in record.ipv6


def accepts(record: Bound, guest: Guest) -> bool:
    """Every field the record binds must equal what the datapath saw; a port binding is
    the link (name and ifindex), so a re-created port of the same name is not it."""
    return (
        (record.mac is None or record.mac == guest.mac)
        and _address_accepted(record, guest.ip)
        and (record.bridge is None or record.bridge == guest.bridge)
        and (record.port is None or (record.port == guest.port
                                     and record.port_ifindex == guest.ifindex))
        and not record.parked  # (a port without its link never equals a guest's ifindex)
    )


def could_overlap(a: Bound, b: Bound) -> bool:
    """True if some guest would be accepted by both records."""
    a_link = (a.port, a.port_ifindex) if a.port is not None else None
    b_link = (b.port, b.port_ifindex) if b.port is not None else None
    return all(
        x is None or y is None or x == y
        for x, y in ((a.mac, b.mac), (a.ip, b.ip), (a.bridge, b.bridge), (a_link, b_link))
    ) and (a.mac is None) == (b.mac is None)


def identity_key(record: Bound) -> tuple[str, str | None]:
    """Records can only be ambiguous with records of the same key: MAC records meet
    records with the same MAC, IP-only records meet by IP."""
    return ("mac", record.mac) if record.mac else ("ip", record.ip)


def _clash(a: Bound, b: Bound) -> bool:
    return specificity(a) == specificity(b) and (could_overlap(a, b) or could_overlap6(a, b))


def could_overlap6(a: Bound, b: Bound) -> bool:
    """True if some IPv6 guest would be accepted by both records."""
    if not (a.ipv6 and b.ipv6):
        return False
    a_link = (a.port, a.port_ifindex) if a.port is not None else None
    b_link = (b.port, b.port_ifindex) if b.port is not None else None
    if not all(x is None or y is None or x == y
               for x, y in ((a.mac, b.mac), (a.bridge, b.bridge), (a_link, b_link))):
        return False
    same_link_local_guest = a.mac is not None and b.mac is not None
    return same_link_local_guest or bool(set(a.ipv6) & set(b.ipv6))


def find_conflict(records: Iterable[R]) -> tuple[R, R] | None:
    """Two records the policy could not tell apart for some guest, if any (records
    that serve nobody meet no one; binding one again is checked then)."""
    # Records that serve nobody (`serves`, inlined: this runs over every record).
    records = [r for r in records
               if not (r.parked or (r.port is not None and r.port_ifindex is None))]
    buckets: dict[object, list[R]] = {}
    buckets6: dict[object, list[R]] = {}
    for record in records:
        # IPv6 records meet by MAC (a link-local guest) or by each address they list.
        for key in ([("mac", record.mac)] if record.mac else
                    [("ip", address) for address in record.ipv6]):
            buckets6.setdefault(key, []).append(record)
    for group in buckets6.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if specificity(a) == specificity(b) and could_overlap6(a, b):
                    return a, b
    for record in records:
        buckets.setdefault(identity_key(record), []).append(record)
    for group in buckets.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if _clash(a, b):
                    return a, b
    return None


def find_new_conflict(new: Iterable[R],
                      neighbours: Callable[[tuple[str, str | None]], Iterable[R]]
                      ) -> tuple[R, R] | None:
    """Like `find_conflict` over the kept records plus `new`, but only pairs with a new
    record are looked at: `neighbours(key)` gives the kept records of one identity key,
    so the cost follows the size of the write, not of the store."""
    buckets: dict[tuple[str, str | None], list[R]] = {}
    for record in new:
        if serves(record):  # a record that serves nobody meets no one
            buckets.setdefault(identity_key(record), []).append(record)
    for key, group in buckets.items():
        kept = [r for r in neighbours(key) if serves(r)]
        for i, b in enumerate(group):
            for a in (*kept, *group[:i]):
                if _clash(a, b):
                    return a, b
    return None


def _narrowest_first(record: Bound) -> int:
    return -specificity(record)


def _index_keys(entry: Bound) -> list[tuple[str, str]]:
    """Where an entry is looked up: by its MAC, else by its IP and each IPv6 address."""
    if entry.mac is not None:
        return [("mac", entry.mac)]
    return [("ip", entry.ip or ""), *(("ip", address) for address in entry.ipv6)]


class IdentityIndex(Generic[E]):
    """Lookup tables built once per store snapshot; `match` is a dict hit plus a filter."""

    __slots__ = ("_by_mac", "_by_ip")

    def __init__(self, entries: Iterable[E]) -> None:
        by_mac: dict[str, list[E]] = {}
        by_ip: dict[str, list[E]] = {}
        for entry in entries:
            if entry.parked or (entry.port is not None and entry.port_ifindex is None):
                continue  # serves nobody (`serves`, inlined: this loop runs per reload)
            for kind, key in _index_keys(entry):
                (by_mac if kind == "mac" else by_ip).setdefault(key, []).append(entry)
        self._by_mac = {k: tuple(sorted(v, key=_narrowest_first)) for k, v in by_mac.items()}
        self._by_ip = {k: tuple(sorted(v, key=_narrowest_first)) for k, v in by_ip.items()}

    def with_changes(self, gone: Iterable[E], added: Iterable[E]) -> IdentityIndex[E]:
        """A new index: this one with `gone` (matched by id) out and `added` in; only
        the lists of the keys they have are rebuilt."""
        tables = {"mac": dict(self._by_mac), "ip": dict(self._by_ip)}
        touched: dict[tuple[str, str], list[E]] = {}

        def groups(entry: E) -> list[list[E]]:
            found = []
            for where in _index_keys(entry):
                if where not in touched:
                    touched[where] = list(tables[where[0]].get(where[1], ()))
                found.append(touched[where])
            return found

        for entry in gone:
            for members in groups(entry):
                members[:] = [e for e in members if e.instance_id != entry.instance_id]
        for entry in added:
            if serves(entry):  # as in __init__: a record that serves nobody is left out
                for members in groups(entry):
                    members.append(entry)
        for (kind, key), members in touched.items():
            if members:
                tables[kind][key] = tuple(sorted(members, key=_narrowest_first))
            else:
                tables[kind].pop(key, None)
        index: IdentityIndex[E] = IdentityIndex(())
        index._by_mac, index._by_ip = tables["mac"], tables["ip"]
        return index

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
    """What a neighbour needs to read a served record's secrets, when it is not bound to
    a port (records without a MAC and with secrets are refused: `binding_problem`).

    A MAC is locked to the port it first asks from, and the lock goes with that port; a
    guest that sends from the record's MAC and IP while no port holds the lock is
    answered.
    """
    secrets = secrets_of(record)
    if not secrets or record.port is not None or not serves(record) or record.mac is None:
        return None
    where = f"on bridge {record.bridge}" if record.bridge else "on any bridge served"
    ip = f" and IP {record.ip}" if record.ip else ""
    return (
        f"record {record.instance_id} carries {' and '.join(secrets)} and is bound to its "
        f"MAC, not to a port: a guest {where} that sends from MAC {record.mac}{ip} reads "
        "them whenever it asks while no port holds that MAC's lock: before this VM's "
        "first request, and after this VM's port is gone. Bind the record to the VM's "
        "port (the VM manager's hook, instance bind, port:), or stop guests from sending "
        "from a MAC not their own (libvirt clean-traffic, ebtables)")


def clash_message(a: Bound, b: Bound) -> str:
    """Why record `b` clashes with `a`, with only the remedies that fit the two."""
    remedies = []
    a_id, b_id = a.instance_id, b.instance_id
    for record, name in ((a, a_id), (b, b_id)):
        if record.port is None:
            remedies.append(f"bind {name} to its port")
        if record.mac is None:
            remedies.append(f"give {name} its MAC")
    advice = (" or ".join(remedies) if remedies else
              "they are bound alike (same MAC, IP, bridge and port): remove one, or correct "
              "its binding")
    return (f"record {b_id}: would answer the same guest as record {a_id} (same MAC/IP and "
            f"equally specific); {advice}")


# A summary of records with the same warning names this many of their ids.
SUMMARY_IDS = 5


def exposure_warnings(records: Iterable[Bound]) -> list[str]:
    """The warnings of many records, one line per kind (the secrets they carry): a bulk
    import of thousands of such records says it once, with the count and the first few
    ids; a kind with one record gets that record's own warning."""
    kinds: dict[tuple[str, ...], list[Bound]] = {}
    for record in records:
        if exposure_warning(record):
            kinds.setdefault(tuple(secrets_of(record)), []).append(record)
    lines = []
    for secrets, group in kinds.items():
        if len(group) == 1:
            lines.append(exposure_warning(group[0]) or "")
            continue
        ids = ", ".join(r.instance_id for r in group[:SUMMARY_IDS])
        more = f" and {len(group) - SUMMARY_IDS} more" if len(group) > SUMMARY_IDS else ""
        lines.append(
            f"{len(group)} records carry {' and '.join(secrets)} and are bound to their "
            f"MAC, not to a port ({ids}{more}): a guest that sends from one's MAC and IP "
            "reads them whenever it asks while no port holds that MAC's lock. Bind each "
            "record to its VM's port (the VM manager's hook, instance bind, port:), or stop "
            "guests from sending from a MAC not their own (libvirt clean-traffic, ebtables)")
    return lines
