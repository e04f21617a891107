"""Record writes every writer shares: the admin API, `instance bind/park`, the hooks.

Each write reads the record with its revision, builds the new record with the same
`parse_record` that `instance import` uses, and writes it only if the revision is still
the one read (`Store.put_many(expect=...)`). Another writer landing in between makes
an unconditional write retry on the newer record; a conditional one (If-Match) fails
with PreconditionFailed, so no write ever silently undoes another.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from transparent_md.errors import UserError
from transparent_md.store import (
    Entry,
    Instance,
    RecordConflict,
    RecordError,
    StaleRevision,
    Store,
)
from transparent_md.store.links import bind_link
from transparent_md.store.record import normalise_key, parse_record, record_specs

# A write that keeps losing the race to other writers gives up after this many tries;
# one record rewritten eight times within one read-modify-write is a runaway writer.
MAX_ATTEMPTS = 8


class NotFound(UserError):
    """No record with this id (GET, PATCH and bind need one)."""

    def __init__(self, instance_id: str, store: str | None = None) -> None:
        super().__init__(f"no instance {instance_id!r}" + (f" in {store}" if store else ""))
        self.instance_id = instance_id


class PreconditionFailed(UserError):
    """If-Match / If-None-Match did not hold for the record's current revision."""

    def __init__(self, instance_id: str, condition: Condition, actual: int | None) -> None:
        have = "absent" if actual is None else f"at revision {actual}"
        super().__init__(f"record {instance_id}: {condition.describe()}, but it is {have}; "
                         "nothing written (read it again and retry)")
        self.instance_id = instance_id
        self.actual = actual


@dataclass(frozen=True)
class Condition:
    """A write's precondition on the record's current revision.

    `revisions` are the ETags If-Match lists (any of them will do); `exists` is True
    for `If-Match: *`, False for `If-None-Match: *` (create only), None for neither.
    """

    revisions: frozenset[int] = frozenset()
    exists: bool | None = None

    def allows(self, revision: int | None) -> bool:
        if self.revisions and revision not in self.revisions:
            return False
        if self.exists is True and revision is None:
            return False
        return not (self.exists is False and revision is not None)

    @property
    def given(self) -> bool:
        return bool(self.revisions) or self.exists is not None

    def describe(self) -> str:
        if self.revisions:
            return "expected it at revision " + " or ".join(map(str, sorted(self.revisions)))
        return "expected it to exist" if self.exists else "expected it absent"


UNCONDITIONAL = Condition()


@dataclass(frozen=True)
class Written:
    """The record as stored by a write, its new revision, and whether it is new."""

    entry: Entry
    created: bool


def get(store: Store, instance_id: str) -> Entry:
    entry = store.entry(instance_id)
    if entry is None:
        raise NotFound(instance_id, store.path)
    return entry


def put(store: Store, instance_id: str, body: Any,
        condition: Condition = UNCONDITIONAL) -> Written:
    """Create or replace the record `instance_id` with `body` (the import format)."""
    new = build(body, instance_id)
    return _write(store, instance_id, condition, lambda current: bind_link(
        new, current.instance if current else None, park_missing=True))


def patch(store: Store, instance_id: str, changes: Any,
          condition: Condition = UNCONDITIONAL, *, create: bool = False,
          park_missing: bool = True) -> Written:
    """Apply a JSON merge patch to the record; `create` patches an absent one from {}.
    A port that is not here parks the record (not `park_missing`: RecordError)."""
    if not isinstance(changes, Mapping):
        raise RecordError(instance_id, None, "a merge patch must be a JSON object")

    def change(current: Entry | None) -> Instance:
        if current is None and not create:
            raise NotFound(instance_id, store.path)
        return patched(current.instance if current else None, instance_id, changes,
                       park_missing=park_missing)

    return _write(store, instance_id, condition, change)


def patched(current: Instance | None, instance_id: str, changes: Mapping[str, Any], *,
            park_missing: bool = True) -> Instance:
    """`current` (None: a new record) merge-patched by `changes`, its port binding naming
    a link: a patch that sets `port` binds it to the link that has the name now; if
    there is none, the record is parked (or, not `park_missing`, refused)."""
    base = current.to_mapping() if current else {"instance_id": instance_id}
    normalised = _normalised(changes)
    if "port" in normalised and "port_ifindex" not in normalised:
        base.pop("port_ifindex", None)
    return bind_link(build(patch_mapping(base, changes), instance_id),
                     park_missing=park_missing)


def bind(store: Store, instance_id: str, port: str, bridge: str | None = None,
         condition: Condition = UNCONDITIONAL) -> Written:
    """Bind the record to the link called `port` now (and to `bridge`), and serve it
    again if it was parked: what VM managers do at start. RecordError if no such link."""
    changes: dict[str, Any] = {"port": port, "parked": None}
    if bridge is not None:
        changes["bridge"] = bridge
    return patch(store, instance_id, changes, condition, park_missing=False)


def park(store: Store, instance_id: str, condition: Condition = UNCONDITIONAL) -> Written:
    """Keep the record but serve it to nobody until it is bound again: at VM stop.

    Its port and link stay as they were (that link is gone or going, and a link is never
    reused), so writing the same record again does not bind it to a newcomer's port."""
    return patch(store, instance_id, {"parked": True}, condition)


def unbind(store: Store, instance_id: str, condition: Condition = UNCONDITIONAL) -> Written:
    """What VM managers' stop hooks call: parks the record (see `park`). Serving a
    stopped VM's record by MAC and bridge instead would hand it to a neighbour that
    copies the MAC while no port holds its lock."""
    return park(store, instance_id, condition)


def delete(store: Store, instance_id: str, condition: Condition = UNCONDITIONAL) -> bool:
    """Remove the record; True if it existed. Deleting an absent record is no error."""
    for _ in range(MAX_ATTEMPTS):
        current = store.entry(instance_id)
        revision = current.revision if current else None
        if not condition.allows(revision):
            raise PreconditionFailed(instance_id, condition, revision)
        if current is None:
            return False
        try:
            store.remove(instance_id, missing_ok=True, expect={instance_id: revision})
        except StaleRevision:
            continue
        return True
    raise _contention(instance_id)


def patch_many(store: Store, changes: Mapping[str, Any],
               remove: Collection[str] = ()) -> dict[str, Written]:
    """Merge-patch several records (creating absent ones) and remove others, all in one
    transaction: a domain's NICs, or an apply, land whole or not at all."""
    for _ in range(MAX_ATTEMPTS):
        current = {i: store.entry(i) for i in (*changes, *remove)}
        new: dict[str, Instance] = {}
        problems: list[RecordError] = []
        for instance_id, change in changes.items():
            entry = current[instance_id]
            try:
                if not isinstance(change, Mapping):
                    raise RecordError(instance_id, None, "a merge patch must be a JSON object")
                new[instance_id] = patched(entry.instance if entry else None, instance_id,
                                           change)
            except RecordError as exc:
                problems.extend(exc.errors)
        if problems:
            raise RecordError(problems[0].record, problems[0].field, problems[0].problem,
                              tuple(problems[1:]))
        expect = {i: (e.revision if e else None) for i, e in current.items()}
        gone = [i for i in remove if current[i] is not None]
        try:
            revisions = store.put_many(new.values(), replace=True, expect=expect, remove=gone)
        except StaleRevision:
            continue
        return {i: Written(Entry(r, revisions[i]), current[i] is None) for i, r in new.items()}
    raise _contention(", ".join(changes))


def build(body: Any, instance_id: str) -> Instance:
    """One record from its import-format mapping; the id comes from the request."""
    if not isinstance(body, Mapping):
        raise RecordError(instance_id, None, "must be a JSON object of record fields")
    raw = {normalise_key(k): v for k, v in body.items()}
    given = raw.get("instance_id", instance_id)
    if given != instance_id:
        raise RecordError(instance_id, "instance_id",
                          f"{given!r} differs from the id in the request ({instance_id!r})")
    raw["instance_id"] = instance_id
    return parse_record(raw, instance_id)


def patch_mapping(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`current` (a record's file form) merge-patched by `changes`.

    Keys may be spelled with dashes, as in import files. A field set under one of its
    spellings (`user_data` or `user_data_base64`) drops the other first, so a patch
    never leaves both behind.
    """
    from transparent_md.api.mergepatch import merge_patch

    changes = _normalised(changes)
    target = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in current.items()}
    for _, spec in record_specs():
        if not spec.aliases:
            continue
        patch_level = changes.get(spec.section) if spec.section else changes
        level = target.get(spec.section) if spec.section else target
        names = (spec.member, *spec.aliases)
        if isinstance(patch_level, Mapping) and isinstance(level, dict) and any(
                n in patch_level for n in names):
            for name in names:
                if name not in patch_level:
                    level.pop(name, None)
    return merge_patch(target, changes)


def _normalised(changes: Mapping[str, Any]) -> dict[str, Any]:
    sections = {s.section for _, s in record_specs() if s.section}
    out: dict[str, Any] = {}
    for key, value in changes.items():
        key = normalise_key(key)
        if key in sections and isinstance(value, Mapping):
            value = {normalise_key(k): v for k, v in value.items()}
        out[key] = value
    return out


def _write(store: Store, instance_id: str, condition: Condition,
           change: Callable[[Entry | None], Instance]) -> Written:
    # A store that remembers what it last read (etcd) spares the first read's round
    # trip of an unconditional write: a stale one loses its commit and is read again.
    read = getattr(store, "recent_entry", None) if not condition.given else None
    for _ in range(MAX_ATTEMPTS):
        current = (read or store.entry)(instance_id)
        read = None
        revision = current.revision if current else None
        if not condition.allows(revision):
            raise PreconditionFailed(instance_id, condition, revision)
        new = change(current)
        try:
            revisions = store.put_many([new], replace=True, expect={instance_id: revision})
        except StaleRevision:
            continue  # another writer landed in between: re-read, re-check, re-apply
        return Written(Entry(new, revisions[instance_id]), created=current is None)
    raise _contention(instance_id)


def _contention(what: str) -> RecordConflict:
    return RecordConflict(f"record {what}: changed by other writers {MAX_ATTEMPTS} times "
                          "while this write was being made; nothing written, try again", what)


__all__ = ["Condition", "NotFound", "PreconditionFailed", "UNCONDITIONAL", "Written",
           "bind", "build", "delete", "get", "park", "patch", "patch_many", "patch_mapping",
           "patched", "put", "unbind"]
