"""The embedded store: one SQLite file, written by the CLI, read by the responder.

Every change is one transaction, so an import either lands whole or not at all.
Readers load a snapshot of bindings (who answers which guest) inside one read
transaction (WAL mode lets them run while a writer commits); a guest's whole record
is read lazily, in one SELECT of one row, so it is the old or the new, never a mix.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable

from transparent_md.errors import UserError
from transparent_md.identity import Guest
from transparent_md.store.cache import ENTRY_CACHE_SIZE, EntryCache
from transparent_md.store.generation import GenerationFile
from transparent_md.store.policy import Bound, find_conflict
from transparent_md.store.record import Instance, RecordError, parse_record
from transparent_md.store.schema import SELECT_BINDINGS, ensure_schema
from transparent_md.store.snapshot import Binding, Entry, Snapshot

# How long a writer waits for another writer before giving up (ms): a CLI call
# should wait out an import running in parallel rather than fail.
BUSY_TIMEOUT_MS = 10_000
# OpenStack's password endpoint stores at most 255 bytes, like nova.
MAX_PASSWORD_BYTES = 255


class PasswordAlreadySet(Exception):
    """The guest already posted its password (nova answers 409)."""


class SqliteStore:
    """`Store` backed by one SQLite file; see `transparent_md.store.Store`."""

    def __init__(self, path: str, *, cache_size: int = ENTRY_CACHE_SIZE) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            ensure_schema(self._db)
            self._generation = GenerationFile(path + ".generation")
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open the instance store {path}: {exc} "
                            "(choose another file with --store PATH)") from exc
        self._seen_stamp: bytes | None = None
        self._snapshot = Snapshot({})
        # Whole records of guests that asked; read-only outside the store.
        self.cache = EntryCache(cache_size)

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

    def entry_for(self, guest: Guest) -> Entry | None:
        """The whole record answering `guest` now; a dict hit unless it changed or aged out."""
        binding = self.snapshot().match(guest)
        if binding is None:
            return None
        entry = self.cache.get(binding)
        if entry is None:
            entry = self._fetch(binding)
        if entry is None:
            # A commit landed after the snapshot was read and its stamp may not show yet:
            # read bindings and the row in one transaction, where they must agree.
            with _ReadTransaction(self._db):
                self._seen_stamp = self._generation.current()
                self._snapshot = Snapshot(self._read_bindings(self._snapshot.bindings))
                binding = self._snapshot.match(guest)
                entry = self._fetch(binding) if binding is not None else None
        return entry

    def _load(self, previous: Snapshot) -> Snapshot:
        with _ReadTransaction(self._db):
            return Snapshot(self._read_bindings(previous.bindings))

    def _read_bindings(self, old: dict[str, Binding]) -> dict[str, Binding]:
        """All bindings; unchanged ones are carried over, so a reload allocates little."""
        bindings: dict[str, Binding] = {}
        for instance_id, revision, mac, ip, bridge, port in self._db.execute(SELECT_BINDINGS):
            binding = old.get(instance_id)
            if binding is None or binding.revision != revision:
                binding = Binding(instance_id, revision, mac, ip, bridge, port)
            bindings[instance_id] = binding
        return bindings

    def _fetch(self, binding: Binding) -> Entry | None:
        """Read `binding`'s record in one SELECT and keep it; None if it changed since."""
        row = self._db.execute(
            "SELECT record, revision FROM instances WHERE instance_id = ?",
            (binding.instance_id,),
        ).fetchone()
        if row is None or row[1] != binding.revision:
            return None
        record, revision = row
        entry = Entry(parse_record(json.loads(record), binding.instance_id), revision)
        self.cache.put(binding.instance_id, entry)
        return entry

    def get(self, instance_id: str) -> Instance | None:
        row = self._db.execute("SELECT record FROM instances WHERE instance_id = ?",
                               (instance_id,)).fetchone()
        return parse_record(json.loads(row[0]), instance_id) if row else None

    def list(self) -> list[Instance]:
        rows = self._db.execute("SELECT instance_id, record FROM instances "
                                "ORDER BY instance_id").fetchall()
        return [parse_record(json.loads(record), i) for i, record in rows]

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
            current = self._read_bindings({})
            if not replace:
                for instance in instances:
                    if instance.instance_id in current:
                        raise UserError(
                            f"record {instance.instance_id}: an instance with this id exists "
                            "(use 'instance update', or 'instance import' to replace)")
            result: dict[str, Bound] = {} if prune else dict(current)
            result.update({i.instance_id: i for i in instances})
            _refuse_ambiguity(result.values())
            if prune:
                gone = [i for i in current if i not in result]
                db.executemany("DELETE FROM instances WHERE instance_id = ?",
                               [(i,) for i in gone])
            for instance in instances:
                db.execute(
                    "INSERT INTO instances (instance_id, record, revision, mac, ip, bridge, "
                    "port) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(instance_id) DO UPDATE SET record = excluded.record, "
                    "revision = excluded.revision, mac = excluded.mac, ip = excluded.ip, "
                    "bridge = excluded.bridge, port = excluded.port",
                    (instance.instance_id, json.dumps(instance.to_mapping()), _next(db),
                     instance.mac, instance.ip, instance.bridge, instance.port),
                )

    def remove(self, instance_id: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM instances WHERE instance_id = ?",
                          (instance_id,)).rowcount == 0:
                raise UserError(f"no instance {instance_id!r} in {self.path}")

    # The password is read live on each GET (rare: once per boot), never cached with
    # the record, so setting it is a one-row UPDATE that neither bumps the revision nor
    # stamps the generation: a boot storm of Windows guests posting passwords does not
    # make every responder process reload every binding once per guest.

    def set_password_once(self, instance_id: str, password: str) -> None:
        """Store the guest's password; raises PasswordAlreadySet on a second attempt."""
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
        with self._write(stamp=False) as db:
            changed = db.execute(
                "UPDATE instances SET password = ? WHERE instance_id = ? AND password IS NULL",
                (password, instance_id),
            ).rowcount
            if not changed:
                raise PasswordAlreadySet(instance_id)

    def clear_password(self, instance_id: str) -> None:
        with self._write(stamp=False) as db:
            db.execute("UPDATE instances SET password = NULL WHERE instance_id = ?",
                       (instance_id,))

    def password(self, instance_id: str) -> str | None:
        row = self._db.execute("SELECT password FROM instances WHERE instance_id = ?",
                               (instance_id,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self._db.close()
        self._generation.close()

    def _write(self, *, stamp: bool = True) -> _WriteTransaction:
        return _WriteTransaction(self._db, self._generation if stamp else None)


class _ReadTransaction:
    """BEGIN ... COMMIT: every SELECT inside sees the same committed state."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN")
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("COMMIT")


class _WriteTransaction:
    """BEGIN IMMEDIATE ... COMMIT, then stamp the generation so readers reload."""

    def __init__(self, db: sqlite3.Connection, generation: GenerationFile | None) -> None:
        self._db = db
        self._generation = generation  # None: a change readers need not reload for

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
            if self._generation is not None:
                self._generation.bump()
        else:
            self._db.execute("ROLLBACK")


def _next(db: sqlite3.Connection) -> int:
    """A store-wide, never reused revision number."""
    db.execute("UPDATE counters SET value = value + 1 WHERE name = 'revision'")
    return db.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()[0]


def _refuse_ambiguity(records: Iterable[Bound]) -> None:
    pair = find_conflict(records)
    if pair:
        a, b = pair
        raise UserError(
            f"record {b.instance_id}: would answer the same guest as record {a.instance_id} "
            f"(same MAC/IP and equally specific); bind one of them to a bridge or port, "
            "or give it a MAC")


__all__ = ["SqliteStore", "PasswordAlreadySet", "RecordError", "MAX_PASSWORD_BYTES"]
