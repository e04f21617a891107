"""An immutable view of the whole store, swapped atomically when the store changes.

Requests read one snapshot from start to finish, so none can see a half-applied
change. Entries whose record did not change are carried into the next snapshot
unchanged, together with whatever the responder prepared for them (`prepared`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transparent_md.identity import Guest
from transparent_md.store.policy import IdentityIndex
from transparent_md.store.record import Instance


@dataclass(frozen=True, eq=False, slots=True)
class Entry:
    """One stored record plus its mutable-by-the-guest state (the OpenStack password).

    `prepared` is a memo owned by the responder (pre-rendered responses); it lives as
    long as this exact revision of the record does.
    """

    instance: Instance
    revision: int
    password: str | None = None
    prepared: dict[Any, Any] = field(default_factory=dict)


class Snapshot:
    """All entries of one committed store state, indexed for the identity policy."""

    __slots__ = ("entries", "_index")

    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries
        self._index: IdentityIndex[Entry] = IdentityIndex(entries.values())

    def match(self, guest: Guest) -> Entry | None:
        """The entry that answers `guest` (see `store.policy`), or None."""
        return self._index.match(guest)


EMPTY = Snapshot({})
