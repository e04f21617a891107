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


class RecordExists(RecordConflict):
    """A create (not a replace) of an id the store already holds."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"record {instance_id}: an instance with this id exists",
                         instance_id, "instance_id")


class NoSuchRecord(UserError):
    """A change or removal of ids the store does not hold; nothing was written."""

    def __init__(self, instance_ids: list[str], path: str) -> None:
        names = ", ".join(repr(i) for i in instance_ids)
        super().__init__(f"no instance {names} in {path}")
        self.instance_ids = instance_ids
        self.path = path


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


class PasswordAlreadySet(Exception):
    """The guest already posted its password (nova answers 409), on any hypervisor."""


class StoreUnavailable(UserError):
    """The store could not be reached (an etcd outage, or another process holding the
    SQLite file's lock): nothing was read or written. A guest is answered 503 (try
    again later), and so is the admin API."""

    status = 503


class StoreBusy(StoreUnavailable):
    """Another process held the SQLite store's lock for longer than this reader or
    writer may wait (a responder waits briefly: guests must not queue behind it)."""

    def __init__(self, path: str, waited_ms: int) -> None:
        super().__init__(f"store {path} is locked by another process (waited {waited_ms} ms); "
                         "nothing read or written: retry, or find the process holding it "
                         f"(fuser {path})")
        self.path = path


class StoreFault(UserError):
    """The store's file cannot be used as it is; `status` is the admin API's answer."""

    status = 500


class InvalidStoredRecord(StoreFault):
    """A stored record breaks a rule (stored before the rule, or written around our
    tools); it is not served, and reading it says so in one line."""

    def __init__(self, path: str, instance_id: str, problem: str) -> None:
        super().__init__(f"store {path}: {problem}; replace the record ('instance import' "
                         f"of a valid one) or remove it ('instance remove {instance_id}')")
        self.instance_id = instance_id


class StoreCorrupted(StoreFault):
    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"store {path} is corrupted ({detail}): restore it from a backup, "
                         "or move it aside and load the records again with "
                         "'instance import'")
        self.path = path


class DiskFull(StoreFault):
    status = 507  # Insufficient Storage

    def __init__(self, path: str) -> None:
        super().__init__(f"disk full at {path}: nothing was written; free space on its "
                         "filesystem and retry")
        self.path = path


class StoreMissing(UserError):
    """A verb that only reads or changes records was pointed at a store file that does
    not exist: a typo would otherwise create an empty store and show nothing."""

    def __init__(self, path: str) -> None:
        super().__init__(f"instance store {path} does not exist (check --store; only "
                         "`instance add`, `import` and `apply` create a store)")
        self.path = path



__all__ = ["DiskFull", "InvalidStoredRecord", "NoSuchRecord", "PasswordAlreadySet",
           "RecordConflict", "RecordExists", "StaleRevision", "StoreBusy", "StoreCorrupted",
           "StoreFault", "StoreMissing", "StoreUnavailable"]
