"""The whole records of guests that asked recently, bounded, least recently used out.

The snapshot keeps only bindings; a guest's full `Entry` (record and the
responder's prepared replies) is loaded on its first request and kept here, so a
booting guest's dozens of connections cost one SELECT, and idle records cost nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from transparent_md.store.snapshot import Binding, Entry

# Records kept whole. Covers a whole network booting at once (about a thousand guests
# on one network, where OpenStack's proxy chain struggles) with every guest staying hot
# through its boot, while keeping every record prepared would cost ten times the
# memory (sizes measured are in the README). A miss is one SELECT.
ENTRY_CACHE_SIZE = 1024


class EntryCache:
    """instance_id -> the Entry of one revision; a newer revision replaces the old."""

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int = ENTRY_CACHE_SIZE) -> None:
        if limit < 1:
            raise ValueError("the entry cache must hold at least one entry")
        self.limit = limit
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    def get(self, binding: Binding) -> Entry | None:
        """The kept Entry of exactly `binding`'s revision, or None (a miss)."""
        entry = self._entries.get(binding.instance_id)
        if entry is None or entry.revision != binding.revision:
            return None
        self._entries.move_to_end(binding.instance_id)
        return entry

    def put(self, instance_id: str, entry: Entry) -> None:
        """Keep `entry` (dropping an older revision of it), evicting the least recent."""
        entries = self._entries
        entries[instance_id] = entry
        entries.move_to_end(instance_id)
        while len(entries) > self.limit:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._entries

    def __iter__(self) -> Iterator[str]:
        """Instance ids, least recently used first (the next to be evicted)."""
        return iter(list(self._entries))
