"""The fleet store: records as JSON under PREFIX/instances/<id> in etcd.

Writers (the CLI, the admin API, the libvirt hook) use this `Store`; daemons never read
it on a request: they serve from a local SQLite cache that follows etcd (see
`store.fleet_cache`).

Every write is optimistic and checked by etcd in one transaction: read the records (a
process keeps them and catches up incrementally), validate the whole result with the
same checks as SQLite (`write_checks`: only records sharing a MAC or IP with a
written one are compared), then commit only if no record
under the prefix changed since that read (a compare on the prefix range's newest mod
revision) and each written key still has the mod revision that was read (compare-and-
swap; 0 for a new id). A concurrent writer makes the transaction fail and this writer
re-reads and re-validates, so two writers can never together store ambiguous records.

etcd caps a transaction at 128 operations (--max-txn-ops); writes of more records go
in batches of WRITE_BATCH, each checked against the revision the previous one made:
a competing write between batches stops the import with a clear error and what landed
stays (an import is idempotent: run it again).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from transparent_md.errors import UserError
from transparent_md.identity import Guest
from transparent_md.store.errors import (
    NoSuchRecord,
    PasswordAlreadySet,
    StaleRevision,
    StoreUnavailable,
)
from transparent_md.store.etcd_client import EtcdClient, b64, prefix_end, unb64
from transparent_md.store.etcd_url import EtcdTarget
from transparent_md.store.policy import identity_key
from transparent_md.store.record import (
    Instance,
    RecordError,
    as_served,
    is_unbound,
)
from transparent_md.store.record import parse_record as _parse
from transparent_md.store.snapshot import Binding, Entry, Snapshot
from transparent_md.store.write_checks import (
    check_batch,
    check_expected,
    check_password,
    refuse_ambiguity,
    refuse_existing,
)

log = logging.getLogger(__name__)

# Records written per transaction: under etcd's default --max-txn-ops (128), leaving
# room for the one prefix compare besides a compare per written key.
WRITE_BATCH = 100
# A write that keeps losing to concurrent writers gives up after this many re-reads.
MAX_WRITE_ATTEMPTS = 20


class EtcdStore:
    """`Store` on etcd; see the module doc for how writes stay consistent fleet-wide."""

    # Writes may come from several threads at once (they commit together): the admin
    # API handles requests on a pool of threads for such a store.
    concurrent_writes = True

    def __init__(self, target: EtcdTarget, client: EtcdClient | None = None) -> None:
        self.target = target
        self.path = target.describe()
        self.client = client or EtcdClient(target)
        self._records_prefix = target.instances_prefix
        self._passwords_prefix = target.passwords_prefix
        # What this process last read: id -> (mod revision, record); None until read.
        self._view: RecordView | None = None
        self._revision = 0  # the etcd revision the view reflects
        # Group commit (see _commit): one committing thread at a time, others queue.
        self._commit_lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []

    # -- reading ------------------------------------------------------------------

    def key(self, instance_id: str) -> str:
        return self._records_prefix + instance_id

    def catch_up(self) -> int:
        """Bring the view to etcd's current revision; returns that revision.

        After the first full read, only records changed since are fetched; a removal
        shows as a count that no longer matches (then everything is read again).
        """
        prefix, end = self._records_prefix, prefix_end(self._records_prefix)
        # A new view is filled before it is set: other threads read it (recent_entry).
        view = self._view
        if view is None:
            reply = self.client.range(prefix, end)
            view = self._apply_kvs(RecordView(), reply.get("kvs", []))
        else:
            reply = self.client.range(prefix, end, min_mod_revision=self._revision + 1)
            self._apply_kvs(view, reply.get("kvs", []))
        revision = int(reply["header"]["revision"])
        if len(view) != _count(self.client.range(prefix, end, count_only=True,
                                                  revision=revision)):
            view = self._apply_kvs(RecordView(), self.client.range(
                prefix, end, revision=revision).get("kvs", []))
        self._view = view
        self._revision = revision
        return revision

    def _apply_kvs(self, view: RecordView, kvs: list[dict]) -> RecordView:
        for kv in kvs:
            instance_id = unb64(kv["key"]).decode()[len(self._records_prefix):]
            try:
                record = parse_record_json(unb64(kv.get("value", "")), instance_id)
            except RecordError as exc:
                log.warning("etcd record %s is not valid and is ignored: %s", instance_id, exc)
                view.pop(instance_id, None)
                continue
            view[instance_id] = (int(kv["mod_revision"]), record)
        return view

    def _records(self) -> RecordView:
        with self._commit_lock:  # the view is the committing thread's
            self.catch_up()
        assert self._view is not None
        return self._view

    def get(self, instance_id: str) -> Instance | None:
        kvs = self.client.range(self.key(instance_id)).get("kvs", [])
        return parse_record_json(unb64(kvs[0].get("value", "")), instance_id) if kvs else None

    def list(self) -> list[Instance]:
        return [record for _, (_, record) in sorted(self._records().items())]

    def entry(self, instance_id: str) -> Entry | None:
        """One record with its revision (etcd's mod revision: what an ETag names)."""
        kvs = self.client.range(self.key(instance_id)).get("kvs", [])
        if not kvs:
            return None
        return Entry(parse_record_json(unb64(kvs[0].get("value", "")), instance_id),
                     int(kvs[0]["mod_revision"]))

    def recent_entry(self, instance_id: str) -> Entry | None:
        """The record as this writer last saw it (its own writes included), without a
        round trip; for an unconditional read-modify-write, whose conditional commit
        catches a newer revision and makes the writer read again (`entry`)."""
        view = self._view
        if view is None:
            return self.entry(instance_id)
        seen = view.get(instance_id)
        return Entry(seen[1], seen[0]) if seen else None

    def entries(self) -> list[Entry]:
        return [Entry(record, revision)
                for _, (revision, record) in sorted(self._records().items())]

    def snapshot(self) -> Snapshot:
        """The bindings as of now (a read of etcd: for tools, never a request path)."""
        return self.refresh()

    def refresh(self) -> Snapshot:
        return Snapshot({i: _binding(i, rev, as_served(r))
                         for i, (rev, r) in self._records().items() if not is_unbound(r)})

    def entry_for(self, guest: Guest) -> Entry | None:
        binding = self.snapshot().match(guest)
        if binding is None:
            return None
        assert self._view is not None
        revision, record = self._view[binding.instance_id]
        return Entry(record, revision)

    # -- writing ------------------------------------------------------------------

    def add(self, instance: Instance) -> None:
        self.put_many([instance], replace=False)

    def update(self, instance: Instance) -> None:
        self.modify(instance.instance_id, lambda _current: instance)

    def modify(self, instance_id: str, change: Callable[[Instance], Instance], *,
               clear_password: bool = False) -> Instance:
        """Read, change and write one record; re-run `change` if another writer won."""
        result: list[Instance] = []

        def plan(view: RecordView | _Overlay) -> tuple[list[Instance], list[str]]:
            if instance_id not in view:
                raise NoSuchRecord([instance_id], self.path)
            new = change(view[instance_id][1])
            if new.instance_id != instance_id:
                raise ValueError(f"a change of {instance_id!r} returned {new.instance_id!r}")
            result[:] = [new]
            return [new], []

        self._commit(plan)
        if clear_password:
            self.clear_password(instance_id)
        return result[0]

    def put_many(self, instances: Iterable[Instance], *, replace: bool = True,
                 prune: bool = False, expect: Mapping[str, int | None] | None = None,
                 remove: Iterable[str] = ()) -> dict[str, int]:
        """Write all records, checked together against every record in etcd; returns
        id -> revision. `expect` and `remove` are as for SqliteStore.put_many."""
        instances = list(instances)
        removing = list(dict.fromkeys(remove))
        seen = check_batch(instances)

        def plan(view: RecordView | _Overlay) -> tuple[list[Instance], list[str]]:
            check_expected(expect, view.revision)
            if not replace:
                refuse_existing(seen, lambda i: i in view and i not in removing)
            gone = [i for i in view if i not in seen] if prune else []
            gone += [i for i in removing if i in view and i not in seen and i not in gone]
            return instances, gone

        return self._commit(plan)

    def remove(self, *instance_ids: str, missing_ok: bool = False,
               expect: Mapping[str, int | None] | None = None) -> list[str]:
        present: list[str] = []

        def plan(view: RecordView | _Overlay) -> tuple[list[Instance], list[str]]:
            check_expected(expect, view.revision)
            present[:] = [i for i in dict.fromkeys(instance_ids) if i in view]
            missing = [i for i in instance_ids if i not in view]
            if missing and not missing_ok:
                raise NoSuchRecord(missing, self.path)
            return [], list(present)

        self._commit(plan)
        return present

    def _commit(self, plan: Plan) -> dict[str, int]:
        """Validate `plan`'s writes against the records, then commit them if nothing
        changed since; on a lost race read again and re-plan. Returns each written
        record's new mod revision.

        Writes from several threads at once are committed together (group commit): a
        thread that finds a transaction in flight queues its plan, and the next thread
        to commit takes every queued plan into one transaction, each validated against
        the records and the plans before it. A plan that fails fails alone."""
        request = _Request(plan)
        with self._queue_lock:
            self._queue.append(request)
        with self._commit_lock:
            if not request.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit_group(group)
        return request.outcome()

    def _commit_group(self, group: list[_Request]) -> None:
        fresh = self._view is None  # a kept view is tried first: the compares catch it
        try:
            for _attempt in range(MAX_WRITE_ATTEMPTS):
                revision = self.catch_up() if fresh else self._revision
                view = self._view
                assert view is not None
                overlay = _Overlay(view)
                planned: list[tuple[_Request, list[Instance], list[str]]] = []
                deferred: list[_Request] = []
                refused = False
                for request in group:
                    if request.done:
                        continue  # refused in an earlier attempt
                    if planned and overlay.size() >= WRITE_BATCH:
                        deferred.append(request)
                        continue
                    try:
                        puts, deletes = request.plan(overlay)
                        changing = {i.instance_id for i in puts}.union(deletes)
                        if planned and (changing & overlay.touched
                                        or overlay.size() + len(changing) > WRITE_BATCH):
                            deferred.append(request)  # etcd takes a key once per txn
                            continue
                        refuse_ambiguity(puts, functools.partial(overlay.records_with,
                                                                 skip=changing))
                    except UserError as exc:
                        if isinstance(exc, StaleRevision) and exc.instance_id in overlay.touched:
                            deferred.append(request)  # it expects what an earlier plan
                            continue                  # of this group is about to change
                        if not fresh and not _certain(exc):
                            refused = True  # refused by an old view: judge again on the
                            break           # current one
                        request.fail(exc)
                        continue
                    overlay.add(puts, deletes)
                    planned.append((request, puts, deletes))
                if refused:
                    fresh = True
                    continue
                puts = [i for _, p, _ in planned for i in p]
                deletes = [i for _, _, d in planned for i in d]
                writes = [("put", i.instance_id, i) for i in puts]
                writes += [("delete", i, None) for i in deletes]
                written = self._write_batches(writes, revision, view) if planned else {}
                if written is None:
                    fresh = True
                    continue
                self._remember(puts, deletes, written)
                self._forget_passwords(deletes)
                for request, p, _ in planned:
                    request.succeed({i.instance_id: written[i.instance_id] for i in p})
                if deferred:
                    self._commit_group(deferred)
                return
            failure: Exception = UserError(
                f"{self.path}: other writers kept changing the records; gave up after "
                f"{MAX_WRITE_ATTEMPTS} attempts")
        except Exception as exc:  # etcd unreachable...: every waiting writer is told
            failure = exc
        for request in group:
            if not request.done:
                request.fail(failure)

    def _remember(self, puts: list[Instance], deletes: list[str],
                  revisions: dict[str, int]) -> None:
        """Our own write, applied to the view: the compares proved nothing else under the
        prefix changed, so the view is current at `revision` without a read."""
        assert self._view is not None
        for gone in deletes:
            self._view.pop(gone, None)
        for record in puts:
            self._view[record.instance_id] = (revisions[record.instance_id], record)
        # Deleted ids are in `revisions` too: the last transaction is the view's revision.
        self._revision = max(revisions.values(), default=self._revision)

    def _write_batches(self, writes: list[tuple[str, str, Instance | None]], revision: int,
                       view: RecordView) -> dict[str, int] | None:
        """Commit `writes` in batches; None if the first lost a race (nothing written),
        else each written id's new mod revision (its batch's transaction revision)."""
        revisions: dict[str, int] = {}
        prefix, end = self._records_prefix, prefix_end(self._records_prefix)
        for start in range(0, max(len(writes), 1), WRITE_BATCH):
            batch = writes[start:start + WRITE_BATCH]
            compare = [{"key": b64(prefix), "range_end": b64(end), "target": "MOD",
                        "result": "LESS", "mod_revision": str(revision + 1)}]
            success = []
            for kind, instance_id, record in batch:
                key = b64(self.key(instance_id))
                seen = view.get(instance_id)
                if seen is None:
                    compare.append({"key": key, "target": "CREATE", "result": "EQUAL",
                                    "create_revision": "0"})
                else:
                    compare.append({"key": key, "target": "MOD", "result": "EQUAL",
                                    "mod_revision": str(seen[0])})
                if kind == "put":
                    assert record is not None
                    value = json.dumps(record.to_mapping(), separators=(",", ":"))
                    success.append({"request_put": {"key": key, "value": b64(value)}})
                else:
                    success.append({"request_delete_range": {"key": key}})
            reply = self.client.txn(compare, success)
            if not reply.get("succeeded"):
                if start == 0:
                    return None
                raise UserError(f"{self.path}: another writer changed records during this "
                                f"import; {start} of {len(writes)} changes landed; run it "
                                "again")
            revision = int(reply["header"]["revision"])
            revisions.update((instance_id, revision) for _, instance_id, _ in batch)
        return revisions

    # -- passwords: PREFIX/passwords/<id>, created once (nova's 409 fleet-wide) ---------

    def set_password_once(self, instance_id: str, password: str) -> int:
        """Create PREFIX/passwords/<id> unless it exists (then PasswordAlreadySet: nova's
        409, fleet-wide); returns the revision that wrote it."""
        check_password(password)
        key = b64(self._passwords_prefix + instance_id)
        reply = self.client.txn(
            [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            [{"request_put": {"key": key, "value": b64(password)}}])
        if not reply.get("succeeded"):
            raise PasswordAlreadySet(instance_id)
        return int(reply["header"]["revision"])

    def _forget_passwords(self, instance_ids: list[str]) -> None:
        """Delete the passwords of removed records (as SQLite drops them with the row),
        so a record created again under the same id starts without one. After the
        records' own transaction (a delete per key would overflow --max-txn-ops);
        a password left behind by an outage in between answers no guest."""
        for start in range(0, len(instance_ids), WRITE_BATCH):
            batch = instance_ids[start:start + WRITE_BATCH]
            try:
                self.client.txn([], [{"request_delete_range": {
                    "key": b64(self._passwords_prefix + i)}} for i in batch])
            except StoreUnavailable as exc:
                log.warning("passwords of removed records kept in etcd: %s", exc)
                return

    def clear_password(self, instance_id: str) -> None:
        self.client.txn([], [{"request_delete_range": {
            "key": b64(self._passwords_prefix + instance_id)}}])

    def password(self, instance_id: str) -> str | None:
        kvs = self.client.range(self._passwords_prefix + instance_id).get("kvs", [])
        return unb64(kvs[0].get("value", "")).decode() if kvs else None

    def close(self) -> None:
        self.client.close()


def parse_record_json(value: bytes, instance_id: str) -> Instance:
    """A stored value as a record, through the one validation path (`parse_record`)."""
    try:
        raw = json.loads(value)
    except ValueError as exc:
        raise RecordError(instance_id, None, f"not JSON ({exc})") from exc
    if isinstance(raw, dict) and raw.get("instance_id", instance_id) != instance_id:
        raise RecordError(instance_id, "instance_id",
                          f"says {raw.get('instance_id')!r}, its key says {instance_id!r}")
    if isinstance(raw, dict) and "instance_id" not in raw and "instance-id" not in raw:
        raw = {**raw, "instance_id": instance_id}  # the key names it
    return _parse(raw, instance_id, stored=True)


def _binding(instance_id: str, revision: int, record: Instance) -> Binding:
    return Binding(instance_id, revision, record.mac, record.ip, record.bridge, record.port,
                   record.port_ifindex, record.parked, record.ipv6)


def _count(reply: dict) -> int:
    return int(reply.get("count", 0))


def _certain(refusal: UserError) -> bool:
    """A refusal no newer read could undo: the record is at a later revision than the
    writer expected (revisions only grow), so asking etcd again is not needed."""
    return (isinstance(refusal, StaleRevision) and refusal.expected is not None
            and refusal.actual is not None and refusal.actual > refusal.expected)


Plan = Callable[["RecordView | _Overlay"], tuple[list[Instance], list[str]]]


class _Request:
    """One writer's plan in a group commit, and its outcome once committed."""

    __slots__ = ("plan", "done", "_revisions", "_error")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.done = False
        self._revisions: dict[str, int] = {}
        self._error: Exception | None = None

    def succeed(self, revisions: dict[str, int]) -> None:
        self._revisions, self.done = revisions, True

    def fail(self, error: Exception) -> None:
        self._error, self.done = error, True

    def outcome(self) -> dict[str, int]:
        if self._error is not None:
            raise self._error
        return self._revisions


class _Overlay:
    """The view as the next plan of a group sees it: with the plans before it applied.
    A record an earlier plan writes has no revision yet: a plan expecting one is stale
    (its writer reads again and retries after this group)."""

    PENDING = -1

    def __init__(self, view: RecordView) -> None:
        self._view = view
        self._puts: dict[str, Instance] = {}
        self._deletes: set[str] = set()
        self.touched: set[str] = set()

    def add(self, puts: list[Instance], deletes: list[str]) -> None:
        for gone in deletes:
            self._puts.pop(gone, None)
            self._deletes.add(gone)
        for record in puts:
            self._deletes.discard(record.instance_id)
            self._puts[record.instance_id] = record
        self.touched.update(self._puts, self._deletes)

    def size(self) -> int:
        return len(self.touched)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._puts or (
            instance_id in self._view and instance_id not in self._deletes)

    def __getitem__(self, instance_id: str) -> tuple[int, Instance]:
        if instance_id in self._puts:
            return self.PENDING, self._puts[instance_id]
        if instance_id in self._deletes:
            raise KeyError(instance_id)
        return self._view[instance_id]

    def __iter__(self):
        yield from (i for i in self._view if i not in self._deletes and i not in self._puts)
        yield from self._puts

    def revision(self, instance_id: str) -> int | None:
        return self[instance_id][0] if instance_id in self else None

    def records_with(self, key: tuple[str, str | None], skip: set[str]) -> list[Instance]:
        kept = self._view.records_with(key, skip | self.touched)
        return kept + [r for i, r in self._puts.items()
                       if i not in skip and identity_key(r) == key]


class RecordView(dict):
    """What a writer last read of etcd: id -> (mod revision, record), with the ids of
    each identity key beside it, so a write's identity check reads a few records, not
    the fleet. Only `view[id] = ...` and `pop` change it."""

    def __init__(self) -> None:
        super().__init__()
        self._by_key: dict[tuple[str, str | None], set[str]] = {}

    def __setitem__(self, instance_id: str, value: tuple[int, Instance]) -> None:
        self.pop(instance_id, None)
        super().__setitem__(instance_id, value)
        self._by_key.setdefault(identity_key(value[1]), set()).add(instance_id)

    def pop(self, instance_id: str, default=None):  # type: ignore[override]
        old = super().pop(instance_id, None)
        if old is None:
            return default
        key = identity_key(old[1])
        ids = self._by_key[key]
        ids.discard(instance_id)
        if not ids:
            del self._by_key[key]
        return old

    def revision(self, instance_id: str) -> int | None:
        seen = self.get(instance_id)
        return seen[0] if seen else None

    def records_with(self, key: tuple[str, str | None], skip: set[str]) -> list[Instance]:
        return [self[i][1] for i in self._by_key.get(key, ()) if i not in skip]
