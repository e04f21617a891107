"""Write refusals every store backend raises, so each writer can answer them its own way.

The CLI prints them (they are `UserError`s); the admin API turns `RecordConflict` into
409 and `StaleRevision` into 412. A backend raises them, and nothing else, for these
cases, so the answers stay the same whatever backend holds the records.
"""

from __future__ import annotations

from transparent_md.errors import UserError


class RecordConflict(UserError):
    """The write is valid alone but clashes with the store: an id that already exists
    (where a create was asked for), or two records answering the same guest."""

    def __init__(self, message: str, instance_id: str, field: str | None = None) -> None:
        super().__init__(message)
        self.instance_id = instance_id
        self.field = field


class StaleRevision(UserError):
    """A conditional write found the record at another revision (or absent/present)."""

    def __init__(self, instance_id: str, expected: int | None, actual: int | None) -> None:
        want = "absent" if expected is None else f"at revision {expected}"
        have = "absent" if actual is None else f"at revision {actual}"
        super().__init__(f"record {instance_id}: expected it {want}, but it is {have}; "
                         "nothing written (read it again and retry)")
        self.instance_id = instance_id
        self.expected = expected
        self.actual = actual


class StoreUnavailable(UserError):
    """The store could not be reached (an etcd outage): nothing was read or written.
    A guest posting its OpenStack password is answered 503 (try again later)."""


__all__ = ["RecordConflict", "StaleRevision", "StoreUnavailable"]
