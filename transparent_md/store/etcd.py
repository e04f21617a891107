"""The fleet store: records as JSON under PREFIX/instances/<id> in etcd.

Writers (the CLI, the admin API, the libvirt hook) use this `Store`; daemons never read
it on a request: they serve from a local SQLite cache that follows etcd (see
`store.fleet_cache`).

Every write is optimistic and checked by etcd in one transaction: read the records (a
process keeps them and catches up incrementally), validate the whole result with the
same identity rules as SQLite (`policy.find_conflict`), then commit only if no record
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

import json
import logging
from collections.abc import Callable, Iterable, Mapping

from transparent_md.errors import UserError
from transparent_md.identity import Guest
from transparent_md.store.errors import RecordConflict, StaleRevision, StoreUnavailable
from transparent_md.store.etcd_client import EtcdClient, b64, prefix_end, unb64
from transparent_md.store.etcd_url import EtcdTarget
from transparent_md.store.policy import Bound, find_conflict
from transparent_md.store.record import (
    Instance,
    RecordError,
    as_served,
    binding_problem,
    is_unbound,
)
from transparent_md.store.record import parse_record as _parse
from transparent_md.store.snapshot import Binding, Entry, Snapshot

log = logging.getLogger(__name__)

# Records written per transaction: under etcd's default --max-txn-ops (128), leaving
# room for the one prefix compare besides a compare per written key.
WRITE_BATCH = 100
# A write that keeps losing to concurrent writers gives up after this many re-reads.
MAX_WRITE_ATTEMPTS = 20
# OpenStack's password endpoint stores at most 255 bytes, like nova (as in SQLite).
MAX_PASSWORD_BYTES = 255


class EtcdStore:
    """`Store` on etcd; see the module doc for how writes stay consistent fleet-wide."""

    def __init__(self, target: EtcdTarget, client: EtcdClient | None = None) -> None:
        self.target = target
        self.path = target.describe()
        self.client = client or EtcdClient(target)
        self._records_prefix = target.instances_prefix
        self._passwords_prefix = target.passwords_prefix
        # What this process last read: id -> (mod revision, record); None until read.
        self._view: dict[str, tuple[int, Instance]] | None = None
        self._revision = 0  # the etcd revision the view reflects

    # -- reading ------------------------------------------------------------------

    def key(self, instance_id: str) -> str:
        return self._records_prefix + instance_id

    def catch_up(self) -> int:
        """Bring the view to etcd's current revision; returns that revision.

        After the first full read, only records changed since are fetched; a removal
        shows as a count that no longer matches (then everything is read again).
        """
        prefix, end = self._records_prefix, prefix_end(self._records_prefix)
        if self._view is None:
            reply = self.client.range(prefix, end)
            self._view = {}
            self._apply_kvs(reply.get("kvs", []))
        else:
            reply = self.client.range(prefix, end, min_mod_revision=self._revision + 1)
            self._apply_kvs(reply.get("kvs", []))
        revision = int(reply["header"]["revision"])
        if len(self._view) != _count(self.client.range(prefix, end, count_only=True,
                                                        revision=revision)):
            self._view = {}
            self._apply_kvs(self.client.range(prefix, end, revision=revision).get("kvs", []))
        self._revision = revision
        return revision

    def _apply_kvs(self, kvs: list[dict]) -> None:
        assert self._view is not None
        for kv in kvs:
            instance_id = unb64(kv["key"]).decode()[len(self._records_prefix):]
            try:
                record = parse_record_json(unb64(kv.get("value", "")), instance_id)
            except RecordError as exc:
                log.warning("etcd record %s is not valid and is ignored: %s", instance_id, exc)
                self._view.pop(instance_id, None)
                continue
            self._view[instance_id] = (int(kv["mod_revision"]), record)

    def _records(self) -> dict[str, tuple[int, Instance]]:
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

        def plan(view: dict[str, tuple[int, Instance]]) -> tuple[list[Instance], list[str]]:
            if instance_id not in view:
                raise UserError(f"no instance {instance_id!r} in {self.path} "
                                "(use 'instance add' to create it)")
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
        seen: set[str] = set()
        for instance in instances:
            if instance.instance_id in seen:
                raise RecordConflict(f"record {instance.instance_id}: instance_id appears "
                                     "twice", instance.instance_id, "instance_id")
            seen.add(instance.instance_id)
            problem = binding_problem(instance)
            if problem is not None:
                raise UserError(RecordError(instance.instance_id, *problem).message)

        def plan(view: dict[str, tuple[int, Instance]]) -> tuple[list[Instance], list[str]]:
            _check_expected(view, expect)
            if not replace:
                for instance in instances:
                    if instance.instance_id in view and instance.instance_id not in removing:
                        raise RecordConflict(
                            f"record {instance.instance_id}: an instance with this id exists "
                            "(use 'instance update', or 'instance import' to replace)",
                            instance.instance_id, "instance_id")
            gone = [i for i in view if i not in seen] if prune else []
            gone += [i for i in removing if i in view and i not in seen and i not in gone]
            return instances, gone

        return self._commit(plan)

    def remove(self, *instance_ids: str, missing_ok: bool = False,
               expect: Mapping[str, int | None] | None = None) -> list[str]:
        present: list[str] = []

        def plan(view: dict[str, tuple[int, Instance]]) -> tuple[list[Instance], list[str]]:
            _check_expected(view, expect)
            present[:] = [i for i in dict.fromkeys(instance_ids) if i in view]
            missing = [i for i in instance_ids if i not in view]
            if missing and not missing_ok:
                raise UserError(
                    f"no instance {', '.join(repr(i) for i in missing)} in {self.path}; "
                    "nothing removed (--missing-ok removes the others)")
            return [], list(present)

        self._commit(plan)
        return present

    def _commit(self, plan: Callable[[dict[str, tuple[int, Instance]]],
                                     tuple[list[Instance], list[str]]]) -> dict[str, int]:
        """Validate `plan`'s writes against every record, then commit them if nothing
        changed since; on a lost race read again and re-plan. Returns the revision of
        written record's new mod revision."""
        fresh = self._view is None  # a kept view is tried first: the compares catch it
        for _attempt in range(MAX_WRITE_ATTEMPTS):
            revision = self.catch_up() if fresh else self._revision
            view = self._view
            assert view is not None
            try:
                puts, deletes = plan(view)
                result: dict[str, Bound] = {i: r for i, (_, r) in view.items()}
                for gone in deletes:
                    result.pop(gone, None)
                result.update({i.instance_id: i for i in puts})
                _refuse_ambiguity(result.values())
            except UserError:
                if fresh:
                    raise
                fresh = True  # refused by an old view: judge again on the current one
                continue
            writes = [("put", i.instance_id, i) for i in puts]
            writes += [("delete", i, None) for i in deletes]
            written = self._write_batches(writes, revision, view)
            if written is not None:
                self._remember(puts, deletes, written)
                self._forget_passwords(deletes)
                return {i.instance_id: written[i.instance_id] for i in puts}
            fresh = True
        raise UserError(f"{self.path}: other writers kept changing the records; "
                        f"gave up after {MAX_WRITE_ATTEMPTS} attempts")

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
                       view: dict[str, tuple[int, Instance]]) -> dict[str, int] | None:
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
        from transparent_md.store.sqlite import PasswordAlreadySet

        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
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


def _refuse_ambiguity(records: Iterable[Bound]) -> None:
    pair = find_conflict(records)
    if pair:
        a, b = pair
        raise RecordConflict(
            f"record {b.instance_id}: would answer the same guest as record {a.instance_id} "
            f"(same MAC/IP and equally specific); bind one of them to a bridge or port, "
            "or give it a MAC", b.instance_id)


def _check_expected(view: dict[str, tuple[int, Instance]],
                    expect: Mapping[str, int | None] | None) -> None:
    """Raise StaleRevision unless every id is at the revision `expect` names (the
    transaction's compares then make sure it still is when the write lands)."""
    for instance_id, expected in (expect or {}).items():
        actual = view[instance_id][0] if instance_id in view else None
        if actual != expected:
            raise StaleRevision(instance_id, expected, actual)
