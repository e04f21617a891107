"""The checks every store backend makes before a write, written once for both.

A backend hands over what it is about to write and a way to look up what it holds;
these functions decide. The identity check looks only at stored records that share an
identity key (`policy.identity_key`) with a written one, so a single-record write costs
a lookup, not a scan of the whole fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from transparent_md.errors import UserError
from transparent_md.store.errors import RecordConflict, RecordExists, StaleRevision
from transparent_md.store.policy import Bound, clash_message, find_conflict, find_new_conflict
from transparent_md.store.record import Instance, RecordError, binding_problem

# OpenStack's password endpoint stores at most 255 bytes, like nova (every backend).
MAX_PASSWORD_BYTES = 255


def check_password(password: str) -> None:
    """A guest's posted password fits what nova keeps (the responder refuses longer
    posts before they get here; this guards every other caller)."""
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")


def check_batch(instances: Iterable[Instance]) -> set[str]:
    """Each id once, each record bound as `binding_problem` requires; returns the ids."""
    seen: set[str] = set()
    for instance in instances:
        if instance.instance_id in seen:
            raise RecordConflict(f"record {instance.instance_id}: instance_id appears "
                                 "twice", instance.instance_id, "instance_id")
        seen.add(instance.instance_id)
        problem = binding_problem(instance)
        if problem is not None:
            raise UserError(RecordError(instance.instance_id, *problem).message)
    return seen


def refuse_existing(ids: Iterable[str], exists: Callable[[str], bool]) -> None:
    """A create (not a replace) of an id the store holds is refused."""
    for instance_id in ids:
        if exists(instance_id):
            raise RecordExists(instance_id)


def check_expected(expect: Mapping[str, int | None] | None,
                   revision_of: Callable[[str], int | None]) -> None:
    """StaleRevision unless every id is at the revision `expect` names (None: absent)."""
    for instance_id, expected in (expect or {}).items():
        actual = revision_of(instance_id)
        if actual != expected:
            raise StaleRevision(instance_id, expected, actual)


def refuse_ambiguity(new: Iterable[Bound],
                     neighbours: Callable[[tuple], Iterable[Bound]] | None) -> None:
    """Refuse `new` if, with the kept records, two would answer the same guest.

    `neighbours(key)` gives the stored records with that identity key that stay (not
    replaced or removed by this write); None checks `new` alone (a prune: nothing else
    stays)."""
    new = list(new)
    pair = find_conflict(new) if neighbours is None else find_new_conflict(new, neighbours)
    if pair:
        a, b = pair
        raise RecordConflict(clash_message(a, b), b.instance_id)


__all__ = ["MAX_PASSWORD_BYTES", "check_batch", "check_expected", "check_password",
           "refuse_ambiguity", "refuse_existing"]
