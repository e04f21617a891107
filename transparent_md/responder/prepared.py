"""Replies prepared for one guest's record, memoised on the store entry.

A record that binds both MAC and IP renders once per revision; a record that leaves
one open takes it from the guest the datapath saw, so the memo is keyed by both.
"""

from __future__ import annotations

from transparent_md.identity import Guest
from transparent_md.responder import ec2, openstack
from transparent_md.responder.http import Reply
from transparent_md.store.snapshot import Entry


class Prepared:
    """Everything the dispatcher needs for one instance, built before any request."""

    __slots__ = ("instance_id", "imdsv2_required", "ec2", "openstack")

    def __init__(self, entry: Entry, mac: str, ip: str) -> None:
        instance = entry.instance
        self.instance_id = instance.instance_id
        self.imdsv2_required = instance.imdsv2_required
        self.ec2: dict[bytes, Reply] = ec2.render(instance, mac, ip)
        self.openstack: dict[bytes, Reply] = openstack.render(instance, mac, ip, entry.password)


def prepared_for(entry: Entry, guest: Guest) -> Prepared:
    """The memoised replies of `entry` as seen by `guest` (built on first use)."""
    mac = entry.instance.mac or guest.mac
    ip = entry.instance.ip or guest.ip
    key = (mac, ip)
    prepared = entry.prepared.get(key)
    if prepared is None:
        prepared = entry.prepared[key] = Prepared(entry, mac, ip)
    return prepared
