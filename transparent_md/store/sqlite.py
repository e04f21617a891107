"""The embedded store: one SQLite file, written by the CLI, read by the responder.

Every change is one transaction, so an import either lands whole or not at all.
Readers load a consistent snapshot inside one read transaction (WAL mode lets them
run while a writer commits) and reuse entries whose revision did not change.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable

from transparent_md.errors import UserError
from transparent_md.store.generation import GenerationFile
from transparent_md.store.policy import find_conflict
from transparent_md.store.record import Instance, RecordError, parse_record
from transparent_md.store.snapshot import Entry, Snapshot

# How long a writer waits for another writer before giving up (ms): a CLI call
# should wait out an import running in parallel rather than fail.
BUSY_TIMEOUT_MS = 10_000
# OpenStack's password endpoint stores at most 255 bytes, like nova.
MAX_PASSWORD_BYTES = 255

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    record      TEXT NOT NULL,     -- JSON, as Instance.to_mapping() spells it
    revision    INTEGER NOT NULL,  -- bumped on every change to this row
    password    TEXT               -- OpenStack password, set once by the guest
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('revision', 0);
"""


class PasswordAlreadySet(Exception):
    """The guest already posted its password (nova answers 409)."""


class SqliteStore:
    """`Store` backed by one SQLite file; see `transparent_md.store.Store`."""

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(_SCHEMA)
            self._generation = GenerationFile(path + ".generation")
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open the instance store {path}: {exc} "
                            "(choose another file with --store PATH)") from exc
        self._seen_stamp: bytes | None = None
        self._snapshot = Snapshot({})

    # -- reading ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The current committed state; reloads only when a writer stamped a change."""
        stamp = self._generation.current()
        if stamp != self._seen_stamp:
            self._seen_stamp = stamp
            self._snapshot = self._load(self._snapshot)
        return self._snapshot

    def refresh(self) -> Snapshot:
        """Reload now, even if no writer stamped the generation file (e.g. `sqlite3` edits)."""
        self._seen_stamp = self._generation.current()
        self._snapshot = self._load(self._snapshot)
        return self._snapshot

    def _load(self, previous: Snapshot) -> Snapshot:
        old = previous.entries
        entries: dict[str, Entry] = {}
        self._db.execute("BEGIN")
        try:
            rows = self._db.execute("SELECT instance_id, revision FROM instances").fetchall()
            for instance_id, revision in rows:
                entry = old.get(instance_id)
                if entry is not None and entry.revision == revision:
                    entries[instance_id] = entry
                else:
                    entries[instance_id] = self._entry(instance_id)
        finally:
            self._db.execute("COMMIT")
        return Snapshot(entries)

    def _entry(self, instance_id: str) -> Entry:
        record, revision, password = self._db.execute(
            "SELECT record, revision, password FROM instances WHERE instance_id = ?",
            (instance_id,),
        ).fetchone()
        return Entry(parse_record(json.loads(record), instance_id), revision, password)

    def get(self, instance_id: str) -> Instance | None:
        entry = self.refresh().entries.get(instance_id)
        return entry.instance if entry else None

    def list(self) -> list[Instance]:
        return sorted((e.instance for e in self.refresh().entries.values()),
                      key=lambda i: i.instance_id)

    # -- writing ------------------------------------------------------------------

    def add(self, instance: Instance) -> None:
        self.put_many([instance], replace=False)

    def update(self, instance: Instance) -> None:
        if self.get(instance.instance_id) is None:
            raise UserError(f"no instance {instance.instance_id!r} in {self.path}")
        self.put_many([instance], replace=True)

    def put_many(self, instances: Iterable[Instance], *, replace: bool = True,
                 prune: bool = False) -> None:
        """Write all records in one transaction (all or nothing).

        `replace` lets records overwrite ones with the same id (a kept password stays);
        `prune` removes every record not in `instances`, so the store mirrors a file.
        """
        instances = list(instances)
        seen: set[str] = set()
        for instance in instances:
            if instance.instance_id in seen:
                raise UserError(f"record {instance.instance_id}: instance_id appears twice")
            seen.add(instance.instance_id)
        with self._write() as db:
            current = {i: parse_record(json.loads(r), i) for i, r in
                       db.execute("SELECT instance_id, record FROM instances")}
            if not replace:
                for instance in instances:
                    if instance.instance_id in current:
                        raise UserError(
                            f"record {instance.instance_id}: an instance with this id exists "
                            "(use 'instance update', or 'instance import' to replace)")
            result = {} if prune else dict(current)
            result.update({i.instance_id: i for i in instances})
            _refuse_ambiguity(result.values())
            if prune:
                gone = [i for i in current if i not in result]
                db.executemany("DELETE FROM instances WHERE instance_id = ?",
                               [(i,) for i in gone])
            for instance in instances:
                db.execute(
                    "INSERT INTO instances (instance_id, record, revision) VALUES (?, ?, ?) "
                    "ON CONFLICT(instance_id) DO UPDATE SET record = excluded.record, "
                    "revision = excluded.revision",
                    (instance.instance_id, json.dumps(instance.to_mapping()), _next(db)),
                )

    def remove(self, instance_id: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM instances WHERE instance_id = ?",
                          (instance_id,)).rowcount == 0:
                raise UserError(f"no instance {instance_id!r} in {self.path}")

    def set_password_once(self, instance_id: str, password: str) -> None:
        """Store the guest's password; raises PasswordAlreadySet on a second attempt."""
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
        with self._write() as db:
            changed = db.execute(
                "UPDATE instances SET password = ?, revision = ? "
                "WHERE instance_id = ? AND password IS NULL",
                (password, _next(db), instance_id),
            ).rowcount
            if not changed:
                raise PasswordAlreadySet(instance_id)

    def clear_password(self, instance_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE instances SET password = NULL, revision = ? "
                       "WHERE instance_id = ?", (_next(db), instance_id))

    def password(self, instance_id: str) -> str | None:
        entry = self.refresh().entries.get(instance_id)
        return entry.password if entry else None

    def close(self) -> None:
        self._db.close()
        self._generation.close()

    def _write(self) -> _WriteTransaction:
        return _WriteTransaction(self._db, self._generation)


class _WriteTransaction:
    """BEGIN IMMEDIATE ... COMMIT, then stamp the generation so readers reload."""

    def __init__(self, db: sqlite3.Connection, generation: GenerationFile) -> None:
        self._db = db
        self._generation = generation

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
            self._generation.bump()
        else:
            self._db.execute("ROLLBACK")


def _next(db: sqlite3.Connection) -> int:
    """A store-wide, never reused revision number."""
    db.execute("UPDATE counters SET value = value + 1 WHERE name = 'revision'")
    return db.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()[0]


def _refuse_ambiguity(records: Iterable[Instance]) -> None:
    pair = find_conflict(records)
    if pair:
        a, b = pair
        raise UserError(
            f"record {b.instance_id}: would answer the same guest as record {a.instance_id} "
            f"(same MAC/IP and equally specific); bind one of them to a bridge or port, "
            "or give it a MAC")


__all__ = ["SqliteStore", "PasswordAlreadySet", "RecordError", "MAX_PASSWORD_BYTES"]
