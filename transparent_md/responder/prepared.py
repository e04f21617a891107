"""Replies prepared for one guest's record, memoised on the store entry.

A record that binds both MAC and IP renders once per revision; a record that leaves
one open takes it from the guest the datapath saw, so the memo is keyed by both.
A new revision builds a new `Prepared`, so nothing memoised on one can go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeAlias

from transparent_md.identity import Guest
from transparent_md.responder import ec2, gce, nocloud, openstack
from transparent_md.responder.http import NOT_FOUND, Reply
from transparent_md.store.policy import is_ipv6
from transparent_md.store.snapshot import Entry

Route: TypeAlias = tuple[Reply, bool]
"""A GET's reply, and whether the IMDSv2 token rules apply to it."""

# Routes memoised per instance: far above the paths a real client walks (cloud-init's
# whole crawl is ~60), small enough that a guest inventing URLs costs little memory.
ROUTE_MEMO_LIMIT = 512
# Longer URLs are routed every time: real metadata paths are under ~130 bytes.
ROUTE_MEMO_MAX_URL = 256
# (MAC, IP) views one record keeps prepared at once. A record that leaves MAC or IP
# open is seen by a guest with a few secondary addresses; one asking with ever new
# addresses only replaces the oldest view (which is rebuilt if asked again).
PREPARED_PER_ENTRY = 16
# Identities whose view GuestViews keeps: above any host's guests in use at once.
VIEWS_LIMIT = 65536


class Routes(dict[bytes, Route]):
    """URL -> Route memo of one instance; bounded, and only for URLs that exist."""

    __slots__ = ()

    def remember(self, url: bytes, route: Route) -> Route:
        """Memoise `route` for `url` (404s and overlong URLs are not kept); return it."""
        if route[0] is not NOT_FOUND and len(url) <= ROUTE_MEMO_MAX_URL:
            if len(self) >= ROUTE_MEMO_LIMIT:
                self.clear()
            self[url] = route
        return route


class Prepared:
    """Everything the dispatcher needs for one instance, built before any request."""

    __slots__ = ("instance_id", "imdsv2_required", "takes_password", "ec2", "openstack",
                 "nocloud", "gce", "routes")

    def __init__(self, entry: Entry, mac: str, ip: str) -> None:
        instance = entry.instance
        self.instance_id = instance.instance_id
        self.imdsv2_required = instance.imdsv2_required
        # A record matched by IP alone answers any guest on its bridge that adds the IP:
        # a password posted there would be theirs to read (store.record.binding_problem).
        self.takes_password = instance.mac is not None or instance.port is not None
        self.ec2: dict[bytes, Reply] = ec2.render(instance, mac, ip)
        self.openstack: dict[bytes, Reply] = openstack.render(instance, mac, ip)
        self.nocloud: dict[bytes, Reply] = nocloud.render(instance, mac, ip)
        self.gce = gce.GceView(instance, mac, ip)  # built on its first GCE request
        self.routes = Routes()


class GuestViews:
    """Each identity's Prepared for the current snapshot, shared by its connections.

    Most connections carry one request, so finding the record (`entry_for`) and its
    view for every connection would cost more than the request itself; the guest's
    identity, the very Guest object the resolver handed out (so a re-resolved slot is
    looked up again) and the snapshot object decide whether the kept view still holds.
    Dropped once on a micro-benchmark's word; through the tc path, with many records,
    a new connection then cost measurably more CPU (see docs/benchmark.md).
    """

    __slots__ = ("_store", "_views", "_on_missing")

    def __init__(self, store, on_missing: Callable[[Guest], None]) -> None:
        self._store = store
        self._views: dict[Hashable, tuple[object, Guest | None, Prepared | None]] = {}
        self._on_missing = on_missing

    def prepared(self, guest: Guest | None, identity: Hashable,
                 snapshot: object) -> Prepared | None:
        """`guest`'s Prepared in `snapshot` (None: no record matches it)."""
        view = self._views.get(identity)
        if view is not None and view[0] is snapshot and view[1] is guest:
            return view[2]
        entry = self._store.entry_for(guest) if guest is not None else None
        prepared = prepared_for(entry, guest) if entry is not None else None
        if entry is None and guest is not None:
            self._on_missing(guest)
        if len(self._views) >= VIEWS_LIMIT:
            self._views.clear()  # identities come and go; the live ones come back at once
        self._views[identity] = (snapshot, guest, prepared)
        return prepared


def prepared_for(entry: Entry, guest: Guest) -> Prepared:
    """The memoised replies of `entry` as seen by `guest` (built on first use)."""
    mac = entry.instance.mac or guest.mac
    # An IPv6 guest sees the record's IPv4 address, or none: its own is not one.
    ip = entry.instance.ip or ("" if is_ipv6(guest.ip) else guest.ip)
    key = (mac, ip)
    memo = entry.prepared
    prepared = memo.get(key)
    if prepared is None:
        while len(memo) >= PREPARED_PER_ENTRY:
            del memo[next(iter(memo))]  # the oldest view (dicts keep insertion order)
        prepared = memo[key] = Prepared(entry, mac, ip)
    return prepared
