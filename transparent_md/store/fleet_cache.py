"""The daemon's local copy of a fleet's records: a SQLite store file plus the etcd
revision it reflects.

It is an ordinary store file (same schema, same generation stamp), so the responder
processes open it like any SQLite store and see each applied change at their next
request (one 8-byte stamp compare): guests never wait on etcd. Each row's revision is
the record's etcd mod revision. The etcd revision, the cluster id and the prefix the
rows came from are kept in a `fleet` table beside them, in the same transaction as the
rows, so after a crash or an outage the cache says exactly where to resume the watch,
and a cache filled from another cluster or prefix is refilled instead of trusted.

OpenStack passwords the guests posted (PREFIX/passwords/<id>) are followed into the
`fleet_passwords` table, each with its mod revision, so a GET of the password is a local
read that sees the fleet's value: one posted on another hypervisor before a live
migration, or cleared by an operator through etcd. They never bump the generation
stamp: a password is read live on each GET, never kept with a prepared record.
"""

from __future__ import annotations

import json
import logging
import sqlite3

from transparent_md.store.bindings_reader import BUMP_RESETS
from transparent_md.store.etcd import parse_record_json
from transparent_md.store.record import RecordError, as_served
from transparent_md.store.schema import UPSERT_RECORD, matching_columns
from transparent_md.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

FLEET_TABLE = "CREATE TABLE IF NOT EXISTS fleet (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
PASSWORDS_TABLE = ("CREATE TABLE IF NOT EXISTS fleet_passwords (instance_id TEXT PRIMARY KEY, "
                   "password TEXT NOT NULL, revision INTEGER NOT NULL)")
SELECT_PASSWORD = "SELECT password FROM fleet_passwords WHERE instance_id = ?"
UPSERT_PASSWORD = (
    "INSERT INTO fleet_passwords (instance_id, password, revision) VALUES (?, ?, ?) "
    "ON CONFLICT(instance_id) DO UPDATE SET password = excluded.password, "
    "revision = excluded.revision")


class FleetCache:
    """Writer side of the cache (the follower); readers open `path` as a SqliteStore."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.store = SqliteStore(path)  # creates it private, with the schema
        self.store.query(FLEET_TABLE)
        self.store.query(PASSWORDS_TABLE)

    def meta(self, name: str) -> str | None:
        rows = self.store.query("SELECT value FROM fleet WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    @property
    def revision(self) -> int:
        """The etcd revision the rows reflect; 0 for a cache never filled."""
        return int(self.meta("revision") or 0)

    def records(self) -> int:
        return self.store.query("SELECT count(*) FROM instances")[0][0]

    def matches(self, source: str, cluster_id: str) -> bool:
        """Whether the rows came from this prefix of this cluster (else refill)."""
        return self.meta("source") == source and self.meta("cluster_id") == cluster_id

    def password(self, instance_id: str) -> str | None:
        rows = self.store.query(SELECT_PASSWORD, (instance_id,))
        return rows[0][0] if rows else None

    def apply(self, changes: list[tuple[str, bytes | None, int]], revision: int,
              passwords: list[tuple[str, bytes | None, int]] = ()) -> None:
        """Apply watch events (id, value or None for a delete, mod revision) of records
        and of passwords and move to `revision`, in one transaction. Readers reload
        (the stamp) only when a record changed."""
        with self.store._write(stamp=bool(changes)) as db:
            for instance_id, value, mod_revision in changes:
                if value is None:
                    db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
                else:
                    _put(db, instance_id, value, mod_revision)
            for instance_id, value, mod_revision in passwords:
                _put_password(db, instance_id, value, mod_revision)
            _set(db, "revision", str(revision))

    def replace_all(self, records: dict[str, tuple[bytes, int]], revision: int, *,
                    source: str, cluster_id: str,
                    passwords: dict[str, tuple[bytes, int]] | None = None) -> None:
        """Make the rows exactly `records` and the passwords exactly `passwords` (id ->
        (value, mod revision)), as of `revision`: a full resynchronisation, in one
        transaction."""
        with self.store._write() as db:
            db.execute("DELETE FROM fleet_passwords")
            for instance_id, (value, mod_revision) in (passwords or {}).items():
                _put_password(db, instance_id, value, mod_revision)
            have = dict(db.execute("SELECT instance_id, revision FROM instances"))
            gone = [(i,) for i in have if i not in records]
            db.executemany("DELETE FROM instances WHERE instance_id = ?", gone)
            for instance_id, (value, mod_revision) in records.items():
                if have.get(instance_id) != mod_revision:
                    _put(db, instance_id, value, mod_revision)
            _set(db, "revision", str(revision))
            db.execute(BUMP_RESETS)  # another cluster's revisions may be lower: read all
            _set(db, "source", source)
            _set(db, "cluster_id", cluster_id)

    def close(self) -> None:
        self.store.close()


def _put(db: sqlite3.Connection, instance_id: str, value: bytes, mod_revision: int) -> None:
    """One record from etcd, through the one validation path; an invalid one (written
    around our tools, e.g. by etcdctl) is logged and not served."""
    try:
        record = as_served(parse_record_json(value, instance_id))
    except RecordError as exc:
        log.error("etcd record %s is not valid and is not served: %s", instance_id, exc)
        db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
        return
    db.execute(UPSERT_RECORD, (instance_id, json.dumps(record.to_mapping()), mod_revision,
                               *matching_columns(record)))


def _put_password(db: sqlite3.Connection, instance_id: str, value: bytes | None,
                  mod_revision: int) -> None:
    if value is None:
        db.execute("DELETE FROM fleet_passwords WHERE instance_id = ?", (instance_id,))
    else:
        db.execute(UPSERT_PASSWORD, (instance_id, value.decode("utf-8", "replace"),
                                     mod_revision))


def remember_posted_password(store: SqliteStore, instance_id: str, password: str,
                             revision: int) -> bool:
    """Put a password this process just wrote to etcd (at `revision`) into the cache at
    once, so the guest's next GET here sees it before the watch brings it; only while
    the cache is older than `revision` (else the follower already applied it, and maybe
    a later clear that must not be undone). Returns whether it was written."""
    with store._write(stamp=False) as db:
        row = db.execute("SELECT value FROM fleet WHERE name = 'revision'").fetchone()
        if row is not None and int(row[0]) >= revision:
            return False
        db.execute(UPSERT_PASSWORD, (instance_id, password, revision))
        return True


def _set(db: sqlite3.Connection, name: str, value: str) -> None:
    db.execute("INSERT INTO fleet (name, value) VALUES (?, ?) "
               "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))
