"""`instance apply`: make the store hold exactly what a file says, and say what changed.

The plan compares each record's file form (`Instance.to_mapping()`), so a file that
spells a default out or leaves it implicit is the same record, and applying the same
file twice changes nothing the second time (no write, no new revision). The writes
land in one transaction, conditional on the revisions the plan was made from: if
another writer changed a planned record in between, nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transparent_md.store import Instance, Store


@dataclass
class Plan:
    created: list[Instance] = field(default_factory=list)
    updated: list[tuple[Instance, list[str]]] = field(default_factory=list)  # + keys changed
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    revisions: dict[str, int | None] = field(default_factory=dict)  # what the plan read

    @property
    def changes(self) -> int:
        return len(self.created) + len(self.updated) + len(self.removed)

    def lines(self) -> list[str]:
        """One line per change, then a summary."""
        out = [f"create {r.instance_id}" for r in self.created]
        out += [f"update {r.instance_id} ({', '.join(keys)})" for r, keys in self.updated]
        out += [f"remove {i}" for i in self.removed]
        out.append(f"{len(self.created)} to create, {len(self.updated)} to update, "
                   f"{len(self.removed)} to remove, {self.unchanged} unchanged")
        return out


def plan(store: Store, desired: list[Instance], *, prune: bool) -> Plan:
    """What applying `desired` would change in `store`."""
    current = {e.instance.instance_id: e for e in store.entries()}
    result = Plan()
    for record in desired:
        entry = current.get(record.instance_id)
        result.revisions[record.instance_id] = entry.revision if entry else None
        if entry is None:
            result.created.append(record)
            continue
        keys = changed_keys(entry.instance.to_mapping(), record.to_mapping())
        if keys:
            result.updated.append((record, keys))
        else:
            result.unchanged += 1
    if prune:
        wanted = {r.instance_id for r in desired}
        for instance_id, entry in current.items():
            if instance_id not in wanted:
                result.removed.append(instance_id)
                result.revisions[instance_id] = entry.revision
    return result


def execute(store: Store, planned: Plan) -> None:
    """Write the plan in one transaction; StaleRevision if a planned record moved on."""
    if not planned.changes:
        return
    writes = [*planned.created, *(r for r, _ in planned.updated)]
    expect = {i: planned.revisions[i] for i in (*(r.instance_id for r in writes),
                                                 *planned.removed)}
    store.put_many(writes, replace=True, expect=expect, remove=planned.removed)


def changed_keys(old: dict, new: dict) -> list[str]:
    """Top-level keys whose value differs (added, removed or changed), sorted."""
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


__all__ = ["Plan", "changed_keys", "execute", "plan"]
