"""Reads a SQLite store's bindings into snapshots: all of them once, then only the rows
changed since.

Every write gives the rows it touches a revision above every earlier one (the SQLite
store's counter, or etcd's mod revision in a fleet cache), and writers commit one at a
time, so the rows changed since the last read are those above the highest revision
read. A removal shows as a row count that no longer matches, and a fleet cache refilled
from another cluster bumps the `resets` counter: either makes the next read a full one.
A change of a few records then costs a few rows and a copy of the index's dicts, not a
read and an index of the whole fleet.
"""

from __future__ import annotations

import logging
import sqlite3

from transparent_md.store.record import UNBOUND_PROBLEM, is_unbound
from transparent_md.store.schema import SELECT_BINDINGS
from transparent_md.store.snapshot import Binding, Snapshot

log = logging.getLogger(__name__)

SELECT_CHANGED = SELECT_BINDINGS + " WHERE revision > ?"
COUNT_ROWS = "SELECT count(*) FROM instances"
# Bumped by a write that gives rows revisions lower than ones already read.
RESETS_COUNTER = "resets"
SELECT_RESETS = "SELECT value FROM counters WHERE name = '" + RESETS_COUNTER + "'"
BUMP_RESETS = ("INSERT INTO counters (name, value) VALUES ('" + RESETS_COUNTER + "', 1) "
               "ON CONFLICT(name) DO UPDATE SET value = value + 1")


class BindingsReader:
    """The bindings of one store file as last read; `read` brings them up to date."""

    def __init__(self, path: str) -> None:
        self.path = path  # for log lines
        self.snapshot = Snapshot({})
        self._all: dict[str, Binding] | None = None  # unbound records included
        self._watermark = 0
        self._resets: int | None = None
        self._unbound: frozenset[str] = frozenset()  # unservable records, logged once
        self._by_name: frozenset[str] = frozenset()  # port bound by name only, logged once

    def forget(self) -> None:
        """Make the next read a full one (the file was replaced)."""
        self._all = None

    def read(self, db: sqlite3.Connection) -> Snapshot:
        """The current snapshot; the caller holds a read transaction on `db`."""
        row = db.execute(SELECT_RESETS).fetchone()
        resets = row[0] if row else 0
        if self._all is None or resets != self._resets:
            self._resets = resets
            return self._read_all(db)
        rows = db.execute(SELECT_CHANGED, (self._watermark,)).fetchall()
        count = db.execute(COUNT_ROWS).fetchone()[0]
        if not rows and count == len(self._all):
            return self.snapshot
        bindings = dict(self._all)
        changed = []
        for row in rows:
            binding = Binding(*row)
            bindings[binding.instance_id] = binding
            changed.append(binding)
        if count != len(bindings):  # a record was removed: find which by a full read
            return self._read_all(db)
        self._all = bindings
        self._watermark = max(self._watermark, *(b.revision for b in changed))
        unbound = (self._unbound - {b.instance_id for b in changed}) | {
            b.instance_id for b in changed if is_unbound(b)}
        self._note_unbound(frozenset(unbound))
        self._note_by_name((self._by_name - {b.instance_id for b in changed}) | {
            b.instance_id for b in changed if _by_name_only(b)})
        servable = self.snapshot.bindings
        gone = [servable[b.instance_id] for b in changed if b.instance_id in servable]
        added = [b for b in changed if b.instance_id not in unbound]
        kept = dict(servable)
        for binding in gone:
            del kept[binding.instance_id]
        kept.update((b.instance_id, b) for b in added)
        self.snapshot = self.snapshot.updated(kept, gone, added)
        return self.snapshot

    def _read_all(self, db: sqlite3.Connection) -> Snapshot:
        """Every binding; unchanged ones are carried over, so a reload allocates little."""
        old = self._all or {}
        bindings: dict[str, Binding] = {}
        watermark = 0
        for instance_id, revision, *matching in db.execute(SELECT_BINDINGS):
            binding = old.get(instance_id)
            if binding is None or binding.revision != revision:
                binding = Binding(instance_id, revision, *matching)
            bindings[instance_id] = binding
            watermark = max(watermark, revision)
        self._all = bindings
        self._watermark = watermark
        unbound = frozenset(i for i, b in bindings.items() if is_unbound(b))
        self._note_unbound(unbound)
        self._note_by_name(frozenset(i for i, b in bindings.items() if _by_name_only(b)))
        if unbound:
            bindings = {i: b for i, b in bindings.items() if i not in unbound}
        self.snapshot = Snapshot(bindings)
        return self.snapshot

    def _note_unbound(self, unbound: frozenset[str]) -> None:
        """Records bound to nothing (stored before that was refused) are not served."""
        if unbound != self._unbound:
            self._unbound = unbound
            if unbound:
                log.error("not serving %d record(s) of %s bound to no MAC, bridge or port "
                          "(%s): %s", len(unbound), self.path, ", ".join(sorted(unbound)[:10]),
                          UNBOUND_PROBLEM)

    def _note_by_name(self, by_name: frozenset[str]) -> None:
        """Records bound to a port by name only (before bindings named links) are kept
        in the snapshot, where they serve nobody (`policy.serves`)."""
        if by_name != self._by_name:
            self._by_name = by_name
            if by_name:
                log.warning("%d record(s) of %s bound to a port by name only (written "
                            "before bindings named links) serve nobody until bound again "
                            "(instance bind ID --port TAP; restarting libvirtd makes its "
                            "hook rebind running VMs): %s", len(by_name), self.path,
                            ", ".join(sorted(by_name)[:10]))


def _by_name_only(binding: Binding) -> bool:
    return binding.port_ifindex is None and binding.port is not None and not binding.parked


__all__ = ["BUMP_RESETS", "BindingsReader"]
