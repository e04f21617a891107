"""GuestViews: an identity's prepared replies are found once per store snapshot and
shared by its connections, and found again whenever that could give another answer."""

from __future__ import annotations

import dataclasses

from tests.responder.fakes import GUEST, RECORD
from transparent_md.responder import prepared as prepared_module
from transparent_md.responder.admission import identity_of
from transparent_md.responder.prepared import GuestViews
from transparent_md.store import parse_record

STRANGER = dataclasses.replace(GUEST, mac="52:54:00:00:00:99", ip="10.0.0.99", ifindex=99)


class CountingStore:
    """The real store, counting the record lookups GuestViews makes."""

    def __init__(self, store) -> None:
        self.store = store
        self.lookups = 0

    def entry_for(self, guest):
        self.lookups += 1
        return self.store.entry_for(guest)


def _views(store) -> tuple[GuestViews, CountingStore, list]:
    counting, missing = CountingStore(store), []
    return GuestViews(counting, missing.append), counting, missing


def test_connections_of_one_identity_share_one_lookup_per_snapshot(store):
    views, counting, _ = _views(store)
    snapshot = store.snapshot()
    first = views.prepared(GUEST, identity_of(GUEST), snapshot)
    for _ in range(5):
        assert views.prepared(GUEST, identity_of(GUEST), snapshot) is first
    assert counting.lookups == 1
    assert first.instance_id == "i-aaaa"


def test_a_store_change_is_seen_by_the_next_connection(store):
    views, counting, _ = _views(store)
    before = views.prepared(GUEST, identity_of(GUEST), store.snapshot())
    store.put_many([parse_record({**RECORD, "hostname": "renamed"})])
    after = views.prepared(GUEST, identity_of(GUEST), store.snapshot())
    assert counting.lookups == 2
    assert before.ec2[b"meta-data/hostname"].body == b"alpha"
    assert after.ec2[b"meta-data/hostname"].body == b"renamed"


def test_a_re_resolved_guest_is_looked_up_again(store):
    """The resolver hands out a new Guest when a shadow slot is re-resolved (another
    port, a lock): the same identity key must not serve the old object's view."""
    views, counting, _ = _views(store)
    snapshot = store.snapshot()
    views.prepared(GUEST, identity_of(GUEST), snapshot)
    moved = dataclasses.replace(GUEST, port="tap7")
    views.prepared(moved, identity_of(moved), snapshot)
    assert counting.lookups == 2


def test_a_guest_without_a_record_is_reported_once_per_snapshot(store):
    views, counting, missing = _views(store)
    snapshot = store.snapshot()
    for _ in range(3):
        assert views.prepared(STRANGER, identity_of(STRANGER), snapshot) is None
    assert missing == [STRANGER] and counting.lookups == 1
    assert views.prepared(None, identity_of(None), snapshot) is None  # unknown peer
    assert missing == [STRANGER] and counting.lookups == 1  # nothing to look up


def test_views_are_bounded(store, monkeypatch):
    monkeypatch.setattr(prepared_module, "VIEWS_LIMIT", 4)
    views, counting, _ = _views(store)
    snapshot = store.snapshot()
    guests = [dataclasses.replace(GUEST, ifindex=10 + i) for i in range(9)]
    for guest in guests:
        views.prepared(guest, identity_of(guest), snapshot)
    assert len(views._views) <= 4
    views.prepared(guests[-1], identity_of(guests[-1]), snapshot)
    assert counting.lookups == 9  # the newest view survived the clearing
