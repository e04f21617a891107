"""The embedded store: one SQLite file, written by the CLI, read by the responder.

Every change is one transaction, so an import either lands whole or not at all, and
an update reads the record it changes inside its own write transaction, so concurrent
updates of different fields all land. Readers load a snapshot of bindings (who
answers which guest) inside one read transaction; a guest's whole record is read
lazily, in one SELECT of one row, so it is the old or the new, never a mix.

The file uses SQLite's rollback journal, not WAL: everything a connection sees is in
the one file it has open, so an operator may replace the store by renaming another
file over it (mv, rsync) and a reader that reopens it sees exactly the new file. (A WAL
store keeps `-wal`/`-shm` files beside it, which a new file would be paired with.)
Readers hold their lock for a snapshot load or one SELECT, so writers barely wait.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping

from transparent_md.errors import UserError
from transparent_md.identity import Guest
from transparent_md.store.cache import ENTRY_CACHE_SIZE, EntryCache
from transparent_md.store.errors import RecordConflict, StaleRevision
from transparent_md.store.generation import GenerationFile
from transparent_md.store.policy import Bound, find_conflict
from transparent_md.store.private import (
    create_private_file,
    loose_mode_warning,
    make_private_dir,
)
from transparent_md.store.record import (
    UNBOUND_PROBLEM,
    Instance,
    RecordError,
    binding_problem,
    is_unbound,
    parse_record,
)
from transparent_md.store.schema import (
    SELECT_BINDINGS,
    UPSERT_RECORD,
    ensure_schema,
    matching_columns,
)
from transparent_md.store.snapshot import Binding, Entry, Snapshot
from transparent_md.store.watch import CHECK_INTERVAL, FileState, FileWatch, identity

log = logging.getLogger(__name__)
_monotonic = time.monotonic  # a module global: one lookup on the request path

# How long a writer waits for another writer before giving up (ms): a CLI call
# should wait out an import running in parallel rather than fail.
BUSY_TIMEOUT_MS = 10_000
# OpenStack's password endpoint stores at most 255 bytes, like nova.
MAX_PASSWORD_BYTES = 255


class PasswordAlreadySet(Exception):
    """The guest already posted its password (nova answers 409)."""


class SqliteStore:
    """`Store` backed by one SQLite file; see `transparent_md.store.Store`."""

    def __init__(self, path: str, *, cache_size: int = ENTRY_CACHE_SIZE,
                 check_interval: float = CHECK_INTERVAL) -> None:
        self.path = path
        self._check_interval = check_interval
        self._db, self._generation, self._watch, self._generation_watch = self._open()
        self._next_file_check = _monotonic() + check_interval
        self._check_files_on_read = True
        warning = loose_mode_warning(path)
        if warning:
            log.warning(warning)
        self._missing = False  # the file is gone; logged once, last snapshot kept
        self._unbound: frozenset[str] = frozenset()  # unservable records, logged once
        self._by_name: frozenset[str] = frozenset()  # port bound by name only, logged once
        self._seen_stamp: int | None = None
        self._snapshot = Snapshot({})
        self._cache_size = cache_size
        # Whole records of guests that asked; read-only outside the store.
        self.cache = EntryCache(cache_size)

    def _open(self) -> tuple[sqlite3.Connection, GenerationFile, FileWatch, FileWatch]:
        """Connect to the file at self.path (creating it 0600 in a 0700 directory)."""
        path = self.path
        try:
            make_private_dir(os.path.dirname(os.path.abspath(path)))
            create_private_file(path)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                _use_rollback_journal(db)
                ensure_schema(db)
                opened = identity(path)
                generation = GenerationFile(path + ".generation")
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.Error, RecordError) as exc:
            raise UserError(f"cannot open the instance store {path}: {exc} "
                            "(choose another file with --store PATH)") from exc
        watch = FileWatch(path, opened)
        generation_watch = FileWatch(generation.path, identity(generation.path))
        return db, generation, watch, generation_watch

    # -- reading ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The current committed state; reloads only when a writer stamped a change.

        At most once per check interval it also looks whether the file was replaced
        (then reopens it) or removed (then keeps serving what it last loaded), unless
        an owner's timer took that over (`check_files_by_timer`).
        """
        if self._check_files_on_read and _monotonic() >= self._next_file_check:
            self.check_files()  # the clock read alone is ~45 ns; a stat ~1.7 us
        stamp = self._generation.words[0]
        if stamp != self._seen_stamp:
            self._seen_stamp = stamp
            self._snapshot = self._load(self._snapshot)
        return self._snapshot

    def check_files_by_timer(self) -> float:
        """Hand the file checks to the caller, which then calls check_files() every
        returned interval from a timer; snapshot() stops reading the clock. For the
        responder, where snapshot() runs per request and that clock read was a quarter
        of its cost."""
        self._check_files_on_read = False
        return self._check_interval

    def check_files(self) -> None:
        """Reopen a replaced store file; log a removed one. snapshot() calls this at most
        once per check interval; a daemon may also call it from a periodic timer."""
        self._next_file_check = _monotonic() + self._check_interval
        state = self._watch.check()
        if state is FileState.MISSING:
            if not self._missing:
                self._missing = True
                log.error("the instance store %s was removed: still serving the %d records "
                          "loaded before; put a store back at that path (or write a record "
                          "with 'instance add/import') and it is read within %.0f s",
                          self.path, len(self._snapshot.bindings), self._check_interval)
            return
        if self._missing:
            self._missing = False
            log.warning("the instance store %s is back", self.path)
        if state is FileState.REPLACED:
            self._reopen()
        elif self._generation_watch.check() is not FileState.SAME:
            # Writers stamp a new generation file; our map of the old one would never change.
            old = self._generation
            self._generation = GenerationFile(self.path + ".generation")
            self._generation_watch = FileWatch(self._generation.path,
                                               identity(self._generation.path))
            old.close()
            self._seen_stamp = None

    def _reopen(self) -> None:
        """Switch to the file now at self.path; on failure keep serving the old one."""
        try:
            opened = self._open()
        except (UserError, OSError) as exc:
            log.error("the instance store %s was replaced but cannot be opened (%s): still "
                      "serving the records loaded before", self.path, exc)
            return
        old_db, old_generation = self._db, self._generation
        self._db, self._generation, self._watch, self._generation_watch = opened
        old_db.close()
        old_generation.close()
        # Revisions of another file mean nothing here: drop every carried-over object.
        self.cache = EntryCache(self._cache_size)
        self._seen_stamp = self._generation.current()
        self._snapshot = self._load(Snapshot({}))
        log.warning("the instance store %s was replaced: reopened it, %d records",
                    self.path, len(self._snapshot.bindings))

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
                self._snapshot = self._servable(self._read_bindings(self._snapshot.bindings))
                binding = self._snapshot.match(guest)
                entry = self._fetch(binding) if binding is not None else None
        return entry

    def _load(self, previous: Snapshot) -> Snapshot:
        with _ReadTransaction(self._db):
            return self._servable(self._read_bindings(previous.bindings))

    def _servable(self, bindings: dict[str, Binding]) -> Snapshot:
        """A snapshot without records bound to nothing (stored before that was refused)."""
        unbound = frozenset(i for i, b in bindings.items() if is_unbound(b))
        by_name = frozenset(i for i, b in bindings.items() if b.port_ifindex is None
                            and b.port is not None and not b.parked)
        if unbound != self._unbound:
            self._unbound = unbound
            if unbound:
                log.error("not serving %d record(s) of %s bound to no MAC, bridge or port "
                          "(%s): %s", len(unbound), self.path, ", ".join(sorted(unbound)[:10]),
                          UNBOUND_PROBLEM)
        if unbound:
            bindings = {i: b for i, b in bindings.items() if i not in unbound}
        if by_name != self._by_name:
            self._by_name = by_name
            if by_name:
                log.warning("%d record(s) of %s bound to a port by name only (written "
                            "before bindings named links) serve nobody until bound again "
                            "(instance bind ID --port TAP; restarting libvirtd makes its "
                            "hook rebind running VMs): %s", len(by_name), self.path,
                            ", ".join(sorted(by_name)[:10]))
        return Snapshot(bindings)

    def _read_bindings(self, old: dict[str, Binding]) -> dict[str, Binding]:
        """All bindings; unchanged ones are carried over, so a reload allocates little."""
        bindings: dict[str, Binding] = {}
        for instance_id, revision, *matching in self._db.execute(SELECT_BINDINGS):
            binding = old.get(instance_id)
            if binding is None or binding.revision != revision:
                binding = Binding(instance_id, revision, *matching)
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
        entry = Entry(parse_record(json.loads(record), binding.instance_id, stored=True),
                      revision)
        self.cache.put(binding.instance_id, entry)
        return entry

    def get(self, instance_id: str) -> Instance | None:
        row = self._db.execute("SELECT record FROM instances WHERE instance_id = ?",
                               (instance_id,)).fetchone()
        return parse_record(json.loads(row[0]), instance_id, stored=True) if row else None

    def list(self) -> list[Instance]:
        rows = self._db.execute("SELECT instance_id, record FROM instances "
                                "ORDER BY instance_id").fetchall()
        return [parse_record(json.loads(record), i, stored=True) for i, record in rows]

    def entry(self, instance_id: str) -> Entry | None:
        """One record with its revision, read together (what a writer's ETag names)."""
        row = self._db.execute("SELECT record, revision FROM instances WHERE instance_id = ?",
                               (instance_id,)).fetchone()
        if row is None:
            return None
        return Entry(parse_record(json.loads(row[0]), instance_id, stored=True), row[1])

    def entries(self) -> list[Entry]:
        """Every record with its revision, by id, from one committed state."""
        rows = self._db.execute("SELECT instance_id, record, revision FROM instances "
                                "ORDER BY instance_id").fetchall()
        return [Entry(parse_record(json.loads(record), i, stored=True), revision)
                for i, record, revision in rows]

    # -- writing ------------------------------------------------------------------

    def add(self, instance: Instance) -> None:
        self.put_many([instance], replace=False)

    def update(self, instance: Instance) -> None:
        """Replace an existing record (its posted password is kept)."""
        self.modify(instance.instance_id, lambda _current: instance)

    def modify(self, instance_id: str, change: Callable[[Instance], Instance], *,
               clear_password: bool = False) -> Instance:
        """Read, change and write one record in one write transaction; returns the new one.

        `change` gets the stored record and returns the new one; as it runs inside the
        transaction, two concurrent modifications of different fields both land.
        """
        with self._write() as db:
            row = db.execute("SELECT record FROM instances WHERE instance_id = ?",
                             (instance_id,)).fetchone()
            if row is None:
                raise UserError(f"no instance {instance_id!r} in {self.path} "
                                "(use 'instance add' to create it)")
            new = change(parse_record(json.loads(row[0]), instance_id, stored=True))
            if new.instance_id != instance_id:
                raise ValueError(f"a change of {instance_id!r} returned {new.instance_id!r}")
            self._put(db, [new], replace=True, prune=False)
            if clear_password:
                db.execute("UPDATE instances SET password = NULL WHERE instance_id = ?",
                           (instance_id,))
        return new

    def put_many(self, instances: Iterable[Instance], *, replace: bool = True,
                 prune: bool = False, expect: Mapping[str, int | None] | None = None,
                 remove: Iterable[str] = ()) -> dict[str, int]:
        """Write all records in one transaction (all or nothing); returns id -> revision.

        `replace` lets records overwrite ones with the same id (a kept password stays);
        `prune` removes every record not in `instances`, so the store mirrors a file.
        `expect` makes the write conditional: each id's current revision must be the one
        given (None: the id must be absent), else StaleRevision and nothing is written.
        `remove` deletes these ids in the same transaction, before the new records are
        checked (so a MAC may move from a removed record to a new one).
        """
        with self._write() as db:
            _check_expected(db, expect)
            db.executemany("DELETE FROM instances WHERE instance_id = ?",
                           [(i,) for i in remove])
            return self._put(db, list(instances), replace=replace, prune=prune)

    def _put(self, db: sqlite3.Connection, instances: list[Instance], *, replace: bool,
             prune: bool) -> dict[str, int]:
        seen: set[str] = set()
        for instance in instances:
            if instance.instance_id in seen:
                raise RecordConflict(f"record {instance.instance_id}: instance_id appears "
                                     "twice", instance.instance_id, "instance_id")
            seen.add(instance.instance_id)
            problem = binding_problem(instance)
            if problem is not None:
                raise UserError(RecordError(instance.instance_id, *problem).message)
        current = self._read_bindings({})
        if not replace:
            for instance in instances:
                if instance.instance_id in current:
                    raise RecordConflict(
                        f"record {instance.instance_id}: an instance with this id exists "
                        "(use 'instance update', or 'instance import' to replace)",
                        instance.instance_id, "instance_id")
        result: dict[str, Bound] = {} if prune else dict(current)
        result.update({i.instance_id: i for i in instances})
        _refuse_ambiguity(result.values())
        if prune:
            gone = [i for i in current if i not in result]
            db.executemany("DELETE FROM instances WHERE instance_id = ?", [(i,) for i in gone])
        revisions: dict[str, int] = {}
        for instance in instances:
            revisions[instance.instance_id] = revision = _next(db)
            db.execute(UPSERT_RECORD, (instance.instance_id, json.dumps(instance.to_mapping()),
                                       revision, *matching_columns(instance)))
        return revisions

    def remove(self, *instance_ids: str, missing_ok: bool = False,
               expect: Mapping[str, int | None] | None = None) -> list[str]:
        """Remove records in one transaction; returns the ids removed.

        Every id is checked first: unless `missing_ok`, one unknown id removes nothing.
        `expect` is as for put_many: a stale revision removes nothing.
        """
        with self._write() as db:
            _check_expected(db, expect)
            present = [i for i in dict.fromkeys(instance_ids) if db.execute(
                "SELECT 1 FROM instances WHERE instance_id = ?", (i,)).fetchone()]
            missing = [i for i in instance_ids if i not in present]
            if missing and not missing_ok:
                raise UserError(
                    f"no instance {', '.join(repr(i) for i in missing)} in {self.path}; "
                    "nothing removed (--missing-ok removes the others)")
            db.executemany("DELETE FROM instances WHERE instance_id = ?",
                           [(i,) for i in present])
        return present

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


def _use_rollback_journal(db: sqlite3.Connection) -> None:
    """Leave WAL mode if a store from an older version is in it (see the module doc).

    Leaving WAL needs the file to ourselves; if another process has it open, it stays
    WAL until something opens it alone (e.g. the daemon at its next start).
    """
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    if mode.lower() != "wal":
        return
    db.execute("PRAGMA busy_timeout = 0")  # never wait for it: it is only a conversion
    try:
        db.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.OperationalError as exc:
        log.info("the instance store stays in WAL mode for now: %s", exc)
    finally:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def _next(db: sqlite3.Connection) -> int:
    """A store-wide, never reused revision number."""
    db.execute("UPDATE counters SET value = value + 1 WHERE name = 'revision'")
    return db.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()[0]


def _check_expected(db: sqlite3.Connection, expect: Mapping[str, int | None] | None) -> None:
    """Raise StaleRevision unless every id is at the revision `expect` names."""
    for instance_id, expected in (expect or {}).items():
        row = db.execute("SELECT revision FROM instances WHERE instance_id = ?",
                         (instance_id,)).fetchone()
        actual = row[0] if row else None
        if actual != expected:
            raise StaleRevision(instance_id, expected, actual)


def _refuse_ambiguity(records: Iterable[Bound]) -> None:
    pair = find_conflict(records)
    if pair:
        a, b = pair
        raise RecordConflict(
            f"record {b.instance_id}: would answer the same guest as record {a.instance_id} "
            f"(same MAC/IP and equally specific); bind one of them to a bridge or port, "
            "or give it a MAC", b.instance_id)


__all__ = ["SqliteStore", "PasswordAlreadySet", "RecordConflict", "RecordError",
           "StaleRevision", "MAX_PASSWORD_BYTES"]
