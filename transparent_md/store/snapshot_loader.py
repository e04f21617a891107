"""Loads a serving store's snapshots on a thread of its own, so the serving loop never
reads the store when it changes.

The loader has its own connection to the store file (a second `SqliteStore`): it sees
a writer's stamp, reads the rows that changed (waiting out the writer's lock if need
be), updates the snapshot's index, and reads the new revisions of the records guests
recently asked for. It then publishes all of that as one value; the serving loop, at
its next request, swaps it in. A burst of writes costs one load per poll, whatever
their number.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from transparent_md.process import start_thread
from transparent_md.store.snapshot import Entry, Snapshot

if TYPE_CHECKING:
    from transparent_md.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

# How often the loader looks at the generation stamp: the delay it adds to a change
# reaching guests, against a wake-up of the thread each time.
POLL_S = 0.005
# Between attempts after a failed load (the store locked or damaged); the serving loop
# keeps the last snapshot meanwhile.
RETRY_S = 0.5
STOP_TIMEOUT_S = 5.0


class Published:
    """One load: the snapshot, the entries read for it (guests that asked lately) and
    the generation stamp it reflects (the serving store compares it with the file's)."""

    __slots__ = ("snapshot", "entries", "stamp")

    def __init__(self, snapshot: Snapshot, entries: list[Entry], stamp: object) -> None:
        self.snapshot = snapshot
        self.entries = entries
        self.stamp = stamp


class SnapshotLoader:
    """Keeps `serving.published` current from a thread with its own connection."""

    def __init__(self, serving: SqliteStore, open_own: Callable[[], SqliteStore], *,
                 poll_s: float = POLL_S) -> None:
        self._serving = serving
        self._open_own = open_own  # the loader's own connection to the same file
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure = ""

    def start(self) -> None:
        self._thread = start_thread("snapshot-loader", self._run)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT_S)

    def _run(self) -> None:
        serving = self._serving
        store = None
        last, last_stamp = serving.published.snapshot, serving.published.stamp
        while not self._stop.is_set():
            try:
                if store is None:
                    store = self._open_own()
                snapshot = store.snapshot()
                stamp = store.loaded_stamp
                if snapshot is not last or stamp != last_stamp:
                    serving.published = Published(snapshot, _reread(store, serving, last,
                                                                    snapshot), stamp)
                    last, last_stamp = snapshot, stamp
                if self._failure:
                    self._failure = ""
                    log.warning("snapshots of %s load again", serving.path)
            except Exception as exc:  # the loop keeps serving the last snapshot
                if str(exc) != self._failure:
                    self._failure = str(exc)
                    log.error("loading a snapshot of %s failed (%s); serving the one loaded "
                              "before", serving.path, exc)
                self._stop.wait(RETRY_S)
                continue
            self._stop.wait(self._poll_s)
        if store is not None:
            store.close()


def _reread(store: SqliteStore, serving: SqliteStore, old: Snapshot,
            new: Snapshot) -> list[Entry]:
    """The new revisions of records the serving loop keeps whole (guests that asked), so
    it never reads a row itself when they change."""
    entries = []
    for instance_id in list(serving.cache):
        binding = new.bindings.get(instance_id)
        if binding is None or old.bindings.get(instance_id) is binding:
            continue
        entry = store.entry(instance_id)
        if entry is not None and entry.revision == binding.revision:
            entries.append(entry)
    return entries


__all__ = ["POLL_S", "Published", "SnapshotLoader"]
