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

One store object may be used from several threads (the daemon's serving loop and its
status thread): every use of its connection, snapshot reloads included, holds the
object's lock, so no two threads ever run statements on it at once. A serving store
(`serving=True`) never waits for another process's lock to reload (the loaded snapshot
is served on) and waits only briefly (`store.lock_wait`) for a read a guest's answer
needs: that guest then gets 503 instead of the whole loop queueing behind an import,
and guests already served keep their answers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from transparent_md.errors import UserError
from transparent_md.identity import Guest
from transparent_md.store.bindings_reader import BindingsReader
from transparent_md.store.cache import ENTRY_CACHE_SIZE, EntryCache
from transparent_md.store.errors import (
    InvalidStoredRecord,
    NoSuchRecord,
    PasswordAlreadySet,
    RecordConflict,
    StaleRevision,
    StoreBusy,
    StoreFault,
)
from transparent_md.store.generation import GenerationFile
from transparent_md.store.lock_wait import LockWait
from transparent_md.store.private import (
    create_private_file,
    loose_mode_warning,
    make_private_dir,
)
from transparent_md.store.record import (
    Instance,
    RecordError,
    parse_record,
)
from transparent_md.store.schema import (
    SELECT_BY_IP,
    SELECT_BY_MAC,
    SELECT_RECORD,
    UPSERT_RECORD,
    ensure_schema,
    matching_columns,
)
from transparent_md.store.snapshot import Binding, Entry, Snapshot
from transparent_md.store.sqlite_faults import store_fault
from transparent_md.store.watch import CHECK_INTERVAL, FileState, FileWatch, identity
from transparent_md.store.write_checks import (
    check_batch,
    check_expected,
    check_password,
    refuse_ambiguity,
    refuse_existing,
)

if TYPE_CHECKING:
    from transparent_md.store.snapshot_loader import Published, SnapshotLoader

log = logging.getLogger(__name__)
_monotonic = time.monotonic  # a module global: one lookup on the request path

# How long a writer waits for another writer before giving up (ms): a CLI call
# should wait out an import running in parallel rather than fail.
BUSY_TIMEOUT_MS = 10_000
# A reload kept out by another process's lock for this long (s) is logged: longer than
# any ordinary commit holds it.
STALE_LOG_S = 1.0

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _guarded(method: _Method) -> _Method:
    """Run a store method holding the connection's lock, with SQLite's failures of the
    file (corrupted, disk full, locked too long) raised as the one-line store errors."""

    @functools.wraps(method)
    def guarded(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            lock_wait = self._lock_wait
            if lock_wait is not None:
                lock_wait.start()
            while True:
                try:
                    return method(self, *args, **kwargs)
                except (sqlite3.Error, OSError) as exc:
                    fault = store_fault(self.path, exc, self._waited_ms())
                    if fault is None:
                        raise
                    if isinstance(fault, StoreBusy) and lock_wait is not None and (
                            lock_wait.pause()):
                        continue  # a serving store's own wait for the lock (see LockWait)
                    raise fault from None

    return guarded  # type: ignore[return-value]


class SqliteStore:
    """`Store` backed by one SQLite file; see `transparent_md.store.Store`."""

    def __init__(self, path: str, *, cache_size: int = ENTRY_CACHE_SIZE,
                 check_interval: float = CHECK_INTERVAL, serving: bool = False) -> None:
        """`serving`: a responder's store, whose loop must not wait for another
        process's lock (see LockWait); otherwise waits up to BUSY_TIMEOUT_MS."""
        self.path = path
        self._check_interval = check_interval
        # Every use of self._db holds this (see the module doc); reentrant, as guarded
        # methods call each other.
        self._lock = threading.RLock()
        self._lock_wait = LockWait() if serving else None
        self._busy_timeout_ms = 0 if serving else BUSY_TIMEOUT_MS
        self._retired: GenerationFile | None = None
        # Opening may wait long for a writer (a daemon starting); serving reads may not.
        self._db, self._generation, self._watch, self._generation_watch = self._open(
            BUSY_TIMEOUT_MS)
        self._set_busy_timeout(self._busy_timeout_ms)
        self._next_file_check = _monotonic() + check_interval
        self._check_files_on_read = True
        warning = loose_mode_warning(path)
        if warning:
            log.warning(warning)
        self._missing = False  # the file is gone; logged once, last snapshot kept
        self._reader = BindingsReader(path)
        # With a background loader: its latest load, and the one snapshot() swapped in.
        self.published: Published | None = None
        self._taken: Published | None = None
        self._loader: SnapshotLoader | None = None
        self._seen_stamp: bytes | None = None
        self._snapshot = Snapshot({})
        self._loaded = False  # a first snapshot was read (later failures keep it)
        self._reload_failure: type | None = None  # the last reload's, logged once
        self._stale_since: float | None = None  # reloads failing since (monotonic)
        self._cache_size = cache_size
        # id -> revision of stored records not served as invalid (logged once each).
        self._invalid_logged: dict[str, int] = {}
        # Whole records of guests that asked; read-only outside the store.
        self.cache = EntryCache(cache_size)

    def _open(self, busy_timeout_ms: int
              ) -> tuple[sqlite3.Connection, GenerationFile, FileWatch, FileWatch]:
        """Connect to the file at self.path (creating it 0600 in a 0700 directory)."""
        path = self.path
        try:
            make_private_dir(os.path.dirname(os.path.abspath(path)))
            create_private_file(path)
            # Used from several threads, never at once: every use holds self._lock.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
                _use_rollback_journal(db, busy_timeout_ms)
                ensure_schema(db)
                opened = identity(path)
                generation = GenerationFile(path + ".generation")
            except BaseException:
                db.close()
                raise
        except (OSError, sqlite3.Error, RecordError) as exc:
            fault = store_fault(path, exc, busy_timeout_ms)
            if fault is not None:
                raise fault from None
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
        an owner's timer took that over (`check_files_by_timer`). Once snapshots are
        loaded in the background (`load_snapshots_in_background`), it only swaps in the
        latest one the loader published.
        """
        published = self.published
        if published is not None:
            if published is not self._taken:
                self._take(published)
            return self._snapshot
        if self._check_files_on_read and _monotonic() >= self._next_file_check:
            self.check_files()  # the clock read alone is ~45 ns; a stat ~1.7 us
        if self._generation.current() != self._seen_stamp:
            self._reload()
        return self._snapshot

    def _reload(self) -> None:
        """Load the snapshot the stamp names. Once one was loaded, a reload tries once
        and never waits for another process's lock: the loaded snapshot is consistent
        and is served on (the next call tries again), so guests already answered never
        queue behind a writer; only a guest the old snapshot cannot answer waits
        (entry_for). A lock held for long, or a damaged file, is logged once."""
        with self._lock:
            stamp = self._generation.current()
            if stamp == self._seen_stamp:
                return  # another thread loaded it while this one waited for the lock
            if not self._loaded:
                self._first_load()
                self._seen_stamp = stamp
                return
            try:
                self._snapshot = self._load(self._snapshot)
            except (sqlite3.Error, OSError) as exc:
                fault = store_fault(self.path, exc, 0)
                if fault is None:
                    raise
                self._stale(fault)
                return
            self._seen_stamp = stamp
            self._fresh()

    def _stale(self, fault: UserError) -> None:
        """A reload failed: log it once, a held lock only once it lasts (commits hold it
        for milliseconds all the time)."""
        now = _monotonic()
        if self._stale_since is None:
            self._stale_since = now
        if self._reload_failure is type(fault) or (
                isinstance(fault, StoreBusy) and now - self._stale_since < STALE_LOG_S):
            return
        self._reload_failure = type(fault)
        log.error("%s; still serving the %d records loaded before", fault,
                  len(self._snapshot.bindings))

    def _fresh(self) -> None:
        if self._reload_failure is not None:
            log.warning("the instance store %s is readable again: %d records", self.path,
                        len(self._snapshot.bindings))
        self._stale_since = self._reload_failure = None

    @_guarded
    def _catch_up(self) -> None:
        """Load the snapshot the stamp names now, waiting for the lock as this store may
        (see LockWait); StoreBusy if it cannot."""
        stamp = self._generation.current()
        self._snapshot = self._load(self._snapshot)
        self._seen_stamp = stamp
        self._fresh()

    @_guarded
    def _catch_up_here(self) -> None:
        """With a loader: this connection's own reader, rows changed since it last read
        (its snapshot then stands until the loader publishes a newer one)."""
        with _ReadTransaction(self._db):
            self._snapshot = self._reader.read(self._db)

    @_guarded
    def _first_load(self) -> None:
        """The first snapshot may wait for a writer as long as opening did (a daemon
        starting), and a failure is raised: there is nothing to serve instead."""
        self._set_busy_timeout(BUSY_TIMEOUT_MS)
        try:
            self._snapshot = self._load(self._snapshot)
        finally:
            self._set_busy_timeout(self._busy_timeout_ms)
        self._loaded = True

    def _set_busy_timeout(self, ms: int) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {ms}")
        self._waits_ms = ms

    def _waited_ms(self) -> int:
        """How long the failed call waited for a lock, for its message."""
        if self._lock_wait is not None and self._waits_ms == self._busy_timeout_ms:
            return round(self._lock_wait.waited * 1000)
        return self._waits_ms

    def load_snapshots_in_background(self) -> None:
        """Let a thread with its own connection load every change (`SnapshotLoader`);
        snapshot() then never reads the file. For the serving loop, which must not wait
        on a writer's lock nor spend its time reading the rows a write changed."""
        from transparent_md.store.snapshot_loader import Published, SnapshotLoader

        if self._loader is not None:
            return
        self.published = Published(self.snapshot(), [], self._seen_stamp)
        self._loader = SnapshotLoader(self, lambda: SqliteStore(self.path, cache_size=1))
        self._loader.start()

    @property
    def loaded_stamp(self) -> bytes | None:
        """The generation stamp the current snapshot reflects."""
        return self._seen_stamp

    def _take(self, published: Published) -> None:
        self._taken = published
        self._snapshot = published.snapshot
        for entry in published.entries:
            self.cache.put(entry.instance.instance_id, entry)

    def check_files_by_timer(self) -> float:
        """Hand the file checks to the caller, which then calls check_files() every
        returned interval from a timer; snapshot() stops reading the clock. For the
        responder, where snapshot() runs per request and that clock read was a quarter
        of its cost."""
        self._check_files_on_read = False
        return self._check_interval

    @_guarded
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
            # Writers stamp a new generation file; the old one would never change again.
            try:
                fresh = GenerationFile(self.path + ".generation")
            except OSError as exc:
                log.error("cannot open the store's generation file %s.generation (%s): "
                          "changes may be seen late until it can", self.path, exc)
                return
            self._retire(self._generation)
            self._generation = fresh
            self._generation_watch = FileWatch(fresh.path, fresh.identity())
            self._seen_stamp = None

    def _reopen(self) -> None:
        """Switch to the file now at self.path; on failure keep serving the old one."""
        try:
            opened = self._open(self._busy_timeout_ms)
        except (UserError, OSError) as exc:
            log.error("the instance store %s was replaced but cannot be opened (%s): still "
                      "serving the records loaded before", self.path, exc)
            return
        old_db, old_generation = self._db, self._generation
        self._db, self._generation, self._watch, self._generation_watch = opened
        old_db.close()
        self._retire(old_generation)
        # Revisions of another file mean nothing here: drop every carried-over object.
        self.cache = EntryCache(self._cache_size)
        self._seen_stamp = self._generation.current()
        self._snapshot = self._load(Snapshot({}))
        log.warning("the instance store %s was replaced: reopened it, %d records",
                    self.path, len(self._snapshot.bindings))

    def _retire(self, old: GenerationFile) -> None:
        """Close a replaced generation file one replacement later: another thread's
        snapshot() may be reading it right now, outside the lock."""
        if self._retired is not None:
            self._retired.close()
        self._retired = old

    @_guarded
    def refresh(self) -> Snapshot:
        """Reload now, all of it, even if no writer stamped the generation file (e.g.
        `sqlite3` edits, which need not give rows a new revision)."""
        self._seen_stamp = self._generation.current()
        self._reader.forget()
        self._snapshot = self._load(self._snapshot)
        self._loaded = True
        self._fresh()
        return self._snapshot

    @_guarded
    def entry_for(self, guest: Guest) -> Entry | None:
        """The whole record answering `guest` now; a dict hit unless it changed or aged out."""
        binding = self.snapshot().match(guest)
        published = self.published
        if binding is None and published is not None and (
                self._generation.current() != published.stamp):
            # A write landed that the loader has not published yet, maybe this guest's
            # record: read the rows changed since (few), so a record written before the
            # guest asked answers it, as the writer was told.
            self._catch_up_here()
            binding = self._snapshot.match(guest)
        if binding is None and self._stale_since is not None:
            # The snapshot is behind a write a held lock kept out: it cannot tell that
            # this guest has no record. Catch up, or the guest is answered 503.
            self._catch_up()
            binding = self._snapshot.match(guest)
        if binding is None:
            return None
        entry = self.cache.get(binding)
        if entry is None:
            entry = self._fetch(binding)
        if entry is None:
            # A commit landed after the snapshot was read and its stamp may not show yet:
            # read bindings and the row in one transaction, where they must agree.
            with _ReadTransaction(self._db):
                stamp = self._generation.current()
                self._snapshot = self._reader.read(self._db)
                self._seen_stamp = stamp
                binding = self._snapshot.match(guest)
                entry = self._fetch(binding) if binding is not None else None
            self._fresh()
        return entry

    def _load(self, previous: Snapshot) -> Snapshot:
        """The snapshot now: the rows changed since `previous` (the last one loaded),
        or all rows when `previous` is not that (a replaced file)."""
        if previous is not self._reader.snapshot:
            self._reader.forget()
        with _ReadTransaction(self._db):
            return self._reader.read(self._db)

    def _fetch(self, binding: Binding) -> Entry | None:
        """Read `binding`'s record in one SELECT and keep it; None if it changed since.

        A row changed since the snapshot (its loader has not published the change yet)
        is still the answer if it binds the same MAC, IP, bridge, port link and parking:
        the guest it matched is the one it matches now. It is not kept: its binding is not yet
        in the snapshot."""
        row = self._db.execute(SELECT_RECORD, (binding.instance_id,)).fetchone()
        if row is None:
            return None
        record, revision, *matching = row
        if revision != binding.revision and tuple(matching) != (
                binding.mac, binding.ip, binding.bridge, binding.port, binding.port_ifindex,
                int(binding.parked)):
            return None
        try:
            instance = self._stored(record, binding.instance_id)
        except InvalidStoredRecord as exc:
            if self._invalid_logged.get(binding.instance_id) != revision:
                self._invalid_logged[binding.instance_id] = revision
                log.error("not serving: %s", exc)
            return None
        entry = Entry(instance, revision)
        if revision == binding.revision:
            self.cache.put(binding.instance_id, entry)
        return entry

    def _stored(self, record: str, instance_id: str) -> Instance:
        """A stored record, checked as every record is; one stored before a rule it
        breaks now (or around our tools) is an InvalidStoredRecord, in one line."""
        try:
            return parse_record(json.loads(record), instance_id, stored=True)
        except RecordError as exc:
            raise InvalidStoredRecord(self.path, instance_id, exc.message) from None
        except (ValueError, RecursionError) as exc:
            raise InvalidStoredRecord(self.path, instance_id,
                                      f"record {instance_id}: not readable JSON ({exc})"
                                      ) from None

    @_guarded
    def get(self, instance_id: str) -> Instance | None:
        row = self._db.execute("SELECT record FROM instances WHERE instance_id = ?",
                               (instance_id,)).fetchone()
        return self._stored(row[0], instance_id) if row else None

    @_guarded
    def list(self) -> list[Instance]:
        rows = self._db.execute("SELECT instance_id, record FROM instances "
                                "ORDER BY instance_id").fetchall()
        return [self._stored(record, i) for i, record in rows]

    @_guarded
    def entry(self, instance_id: str) -> Entry | None:
        """One record with its revision, read together (what a writer's ETag names)."""
        row = self._db.execute("SELECT record, revision FROM instances WHERE instance_id = ?",
                               (instance_id,)).fetchone()
        if row is None:
            return None
        return Entry(self._stored(row[0], instance_id), row[1])

    @_guarded
    def entries(self) -> list[Entry]:
        """Every record with its revision, by id, from one committed state."""
        rows = self._db.execute("SELECT instance_id, record, revision FROM instances "
                                "ORDER BY instance_id").fetchall()
        return [Entry(self._stored(record, i), revision)
                for i, record, revision in rows]

    # -- writing ------------------------------------------------------------------

    def add(self, instance: Instance) -> None:
        self.put_many([instance], replace=False)

    def update(self, instance: Instance) -> None:
        """Replace an existing record (its posted password is kept)."""
        self.modify(instance.instance_id, lambda _current: instance)

    @_guarded
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
                raise NoSuchRecord([instance_id], self.path)
            new = change(self._stored(row[0], instance_id))
            if new.instance_id != instance_id:
                raise ValueError(f"a change of {instance_id!r} returned {new.instance_id!r}")
            self._put(db, [new], replace=True, prune=False)
            if clear_password:
                db.execute("UPDATE instances SET password = NULL WHERE instance_id = ?",
                           (instance_id,))
        return new

    @_guarded
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
            check_expected(expect, lambda i: _revision(db, i))
            db.executemany("DELETE FROM instances WHERE instance_id = ?",
                           [(i,) for i in remove])
            return self._put(db, list(instances), replace=replace, prune=prune)

    def _put(self, db: sqlite3.Connection, instances: list[Instance], *, replace: bool,
             prune: bool) -> dict[str, int]:
        ids = check_batch(instances)
        if not replace:
            refuse_existing(ids, lambda i: _revision(db, i) is not None)
        refuse_ambiguity(instances, None if prune else lambda key: [
            b for b in _bindings_with(db, key) if b.instance_id not in ids])
        if prune:
            gone = [i for (i,) in db.execute("SELECT instance_id FROM instances")
                    if i not in ids]
            db.executemany("DELETE FROM instances WHERE instance_id = ?", [(i,) for i in gone])
        revisions: dict[str, int] = {}
        for instance in instances:
            revisions[instance.instance_id] = revision = _next(db)
            db.execute(UPSERT_RECORD, (instance.instance_id, json.dumps(instance.to_mapping()),
                                       revision, *matching_columns(instance)))
        return revisions

    @_guarded
    def remove(self, *instance_ids: str, missing_ok: bool = False,
               expect: Mapping[str, int | None] | None = None) -> list[str]:
        """Remove records in one transaction; returns the ids removed.

        Every id is checked first: unless `missing_ok`, one unknown id removes nothing.
        `expect` is as for put_many: a stale revision removes nothing.
        """
        with self._write() as db:
            check_expected(expect, lambda i: _revision(db, i))
            present = [i for i in dict.fromkeys(instance_ids) if db.execute(
                "SELECT 1 FROM instances WHERE instance_id = ?", (i,)).fetchone()]
            missing = [i for i in instance_ids if i not in present]
            if missing and not missing_ok:
                raise NoSuchRecord(missing, self.path)
            db.executemany("DELETE FROM instances WHERE instance_id = ?",
                           [(i,) for i in present])
        return present

    # The password is read live on each GET (rare: once per boot), never cached with
    # the record, so setting it is a one-row UPDATE that neither bumps the revision nor
    # stamps the generation: a boot storm of Windows guests posting passwords does not
    # make every responder process reload every binding once per guest.

    @_guarded
    def set_password_once(self, instance_id: str, password: str) -> None:
        """Store the guest's password; raises PasswordAlreadySet on a second attempt."""
        check_password(password)
        with self._write(stamp=False) as db:
            changed = db.execute(
                "UPDATE instances SET password = ? WHERE instance_id = ? AND password IS NULL",
                (password, instance_id),
            ).rowcount
            if not changed:
                raise PasswordAlreadySet(instance_id)

    @_guarded
    def clear_password(self, instance_id: str) -> None:
        with self._write(stamp=False) as db:
            db.execute("UPDATE instances SET password = NULL WHERE instance_id = ?",
                       (instance_id,))

    @_guarded
    def password(self, instance_id: str) -> str | None:
        row = self._db.execute("SELECT password FROM instances WHERE instance_id = ?",
                               (instance_id,)).fetchone()
        return row[0] if row else None

    @_guarded
    def query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        """Rows of one statement, run under the store's lock (for FleetCache's tables)."""
        return self._db.execute(sql, parameters).fetchall()

    def close(self) -> None:
        if self._loader is not None:
            self._loader.stop()
            self._loader = None
        with self._lock:
            self._db.close()
            self._generation.close()
            if self._retired is not None:
                self._retired.close()
                self._retired = None

    def _write(self, *, stamp: bool = True) -> _WriteTransaction:
        """BEGIN IMMEDIATE ... COMMIT under the store's lock (see _WriteTransaction)."""
        return _WriteTransaction(self, self._generation if stamp else None)


class _ReadTransaction:
    """BEGIN ... COMMIT: every SELECT inside sees the same committed state. The caller
    holds the store's lock."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN")
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        _end(self._db, "COMMIT" if exc_type is None else "ROLLBACK")


class _WriteTransaction:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock, then stamp the generation so
    readers reload. Failures come out as SQLite raised them: the guarded store method
    around it retries a held lock (serving stores) and says what a failure means."""

    def __init__(self, store: SqliteStore, generation: GenerationFile | None) -> None:
        self._store = store
        self._generation = generation  # None: a change readers need not reload for

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        store._lock.acquire()
        try:
            store._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            store._lock.release()
            raise
        return store._db

    def __exit__(self, exc_type, exc, tb) -> None:
        store = self._store
        try:
            if exc_type is not None:
                _end(store._db, "ROLLBACK")
                return
            _end(store._db, "COMMIT")
            if self._generation is not None:
                self._generation.bump()
        finally:
            store._lock.release()


def _end(db: sqlite3.Connection, statement: str) -> None:
    """COMMIT or ROLLBACK; a COMMIT that fails (disk full, lock) is rolled back, so the
    connection is never left inside a transaction for the next BEGIN to trip over.
    SQLite itself rolls back on some failures (a full disk): nothing is left to end."""
    if statement == "ROLLBACK" and not db.in_transaction:
        return
    try:
        db.execute(statement)
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise



def _use_rollback_journal(db: sqlite3.Connection, busy_timeout_ms: int) -> None:
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
        db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")


def _next(db: sqlite3.Connection) -> int:
    """A store-wide, never reused revision number, above every row's (so readers find
    changed rows by revision, even in a file some other tool wrote rows into)."""
    db.execute("UPDATE counters SET value = max(value, coalesce((SELECT max(revision) "
               "FROM instances), 0)) + 1 WHERE name = 'revision'")
    return db.execute("SELECT value FROM counters WHERE name = 'revision'").fetchone()[0]


def _revision(db: sqlite3.Connection, instance_id: str) -> int | None:
    row = db.execute("SELECT revision FROM instances WHERE instance_id = ?",
                     (instance_id,)).fetchone()
    return row[0] if row else None


def _bindings_with(db: sqlite3.Connection, key: tuple[str, str | None]) -> list[Binding]:
    """The stored bindings of one identity key (`policy.identity_key`), by index."""
    kind, value = key
    sql = SELECT_BY_MAC if kind == "mac" else SELECT_BY_IP
    return [Binding(*row) for row in db.execute(sql, (value,))]


__all__ = ["SqliteStore", "PasswordAlreadySet", "RecordConflict", "RecordError",
           "StaleRevision", "StoreFault"]
