"""Keeps a daemon's local cache (`FleetCache`) following the fleet's records in etcd.

Three threads in the daemon process, never on a guest's path:
- the watcher resumes a watch on PREFIX/ (records under instances/, the passwords guests
  posted under passwords/) from the revision after the cache's and queues each
  response. A watch canceled for compaction, a cluster id that changed, or a cache
  filled from elsewhere triggers a full resynchronisation (a paged read at one
  revision, applied in one transaction). Each daemon starts at a member of its own
  (`EtcdClient(first_member=...)`), so watches spread over the members; when the
  watched member is lost, the watch resumes on another at once, with a WARNING naming
  both (an ERROR only when no member answers).
- the applier writes everything queued in one cache transaction: a burst of writes
  costs one commit (and one snapshot load by the responders), not one per write.
- the poller asks every POLL_INTERVAL_S for the newest mod revision under the prefix:
  that gives `store_connected` and `store_revision_lag`, and it ends a watch that has
  gone quiet while etcd moved on (a member cut off from its cluster), so the watcher
  reconnects, to another member if needed.
When etcd is unreachable the cache simply stays as it is and is served; the threads
retry every RETRY_S.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import dataclass

from transparent_md.process import start_thread
from transparent_md.store.etcd_client import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    WatchBroke,
    prefix_end,
    unb64,
)
from transparent_md.store.etcd_url import EtcdTarget
from transparent_md.store.fleet_cache import FleetCache

log = logging.getLogger(__name__)

# Lag and liveness resolution; one small keys-only read a second per hypervisor.
POLL_INTERVAL_S = 1.0
# Between reconnect attempts while etcd is unreachable.
RETRY_S = 0.5
# A watch whose cache has not moved while etcd's newest revision is ahead for this many
# polls is treated as stuck and reopened (a quiet watch on a cut-off member).
STALL_POLLS = 3
# Records per page of a full resynchronisation (all pages at one revision): keeps one
# reply near a megabyte with records of a few hundred bytes.
RESYNC_PAGE = 2000
# How long `start()` waits for the first sync before serving from the cache as it is.
INITIAL_SYNC_WAIT_S = 10.0
# Failed polls in a row before etcd counts as unreachable: a member lost with quorum
# held leaves the others without a leader for an election's time, and reads that need
# one wait it out; the watch notices a real outage at once anyway.
POLL_FAILURES_TO_DISCONNECT = 3


@dataclass
class FleetState:
    """What status and metrics report."""

    connected: bool = False
    revision: int = 0      # the etcd revision the cache reflects
    newest: int = 0        # newest record mod revision seen in etcd
    records: int = 0
    resyncs: int = 0
    last_error: str = ""

    @property
    def lag(self) -> int:
        return max(0, self.newest - self.revision)


class FleetFollower:
    def __init__(self, target: EtcdTarget, cache_path: str, *,
                 poll_interval_s: float = POLL_INTERVAL_S, spread_key: str = "") -> None:
        self.target = target
        self.cache_path = cache_path
        self.cache = FleetCache(cache_path)
        self.client = EtcdClient(target, first_member=zlib.crc32(spread_key.encode()))
        self._poll_interval_s = poll_interval_s
        # One watch and one paged read cover records and passwords alike.
        self._root = target.root
        self._end = prefix_end(self._root)
        self._records = target.instances_prefix
        self._passwords = target.passwords_prefix
        self.state = FleetState(revision=self.cache.revision, records=self.cache.records())
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._stalled_polls = 0
        self._failed_polls = 0
        self._threads: list[threading.Thread] = []
        # Watch responses the applier has yet to write, and whether it is writing.
        self._queue: list[tuple[list, list, int]] = []
        self._applying = False
        self._queue_changed = threading.Condition()
        # The member a watch was lost on and why, until the watch resumes elsewhere.
        self._lost: tuple[str, str] | None = None

    def start(self, wait_s: float = INITIAL_SYNC_WAIT_S) -> None:
        """Start following; wait up to `wait_s` for a first sync (not when etcd is down:
        the first failed attempt returns at once, and the cache is served as it is)."""
        for name, target in (("fleet-watch", self._watch_loop), ("fleet-apply", self._apply_loop),
                             ("fleet-poll", self._poll_loop)):
            self._threads.append(start_thread(name, target))
        self._synced.wait(wait_s)
        if self.state.connected:
            log.info("fleet store %s: cache %s at revision %d, %d records", self.target.describe(),
                     self.cache_path, self.state.revision, self.state.records)
        else:
            log.warning("fleet store %s unreachable (%s): serving the %d records of cache %s "
                        "(revision %d) until it is back", self.target.describe(),
                        self.state.last_error, self.state.records, self.cache_path,
                        self.state.revision)

    def stop(self) -> None:
        self._stop.set()
        with self._queue_changed:
            self._queue_changed.notify_all()
        self.client.close_watch()
        for thread in self._threads:
            thread.join(timeout=5)
        self.client.close()
        self.cache.close()

    def status(self) -> dict:
        """Fields for `transparent-md status` (store_connected, store_revision_lag...)."""
        state = self.state
        return {"store": self.target.describe(), "store_cache": self.cache_path,
                "store_connected": state.connected, "store_revision": state.revision,
                "store_revision_lag": state.lag, "store_resyncs": state.resyncs,
                "store_error": "" if state.connected else state.last_error}

    # -- watcher ------------------------------------------------------------------

    def _watch_loop(self) -> None:
        resync = True  # checked against the cluster on every (re)connect
        while not self._stop.is_set():
            try:
                self._drain()  # the watch resumes after what the cache holds
                if resync:
                    self._resync_if_needed()
                    resync = False
                resync = self._follow()
                self._lost = (self.client.watch_member, "its watch stream ended")
            except WatchBroke as exc:
                # Another member may answer: resume there at once (logged when it does).
                self._lost = (exc.member, exc.reason)
            except (EtcdUnavailable, EtcdError) as exc:
                if self._stop.is_set():
                    return
                self._lost = None
                self._disconnected(str(exc))
                resync = True
                self._synced.set()
                self._stop.wait(RETRY_S)
            except Exception:  # never let the follower die: the cache keeps serving
                log.exception("fleet follower failed; retrying")
                resync = True
                self._stop.wait(RETRY_S)

    def _resync_if_needed(self) -> None:
        """Refill the cache unless it came from this cluster and prefix and its revision
        is still in etcd's history (checked by the watch that follows)."""
        reply = self.client.range(self._root, self._end, count_only=True)
        header = reply["header"]
        cluster_id, revision = str(header.get("cluster_id", "")), int(header["revision"])
        cache = self.cache
        if cache.matches(self._root, cluster_id) and cache.revision <= revision:
            self._connected()
            return
        self._resync(cluster_id)

    def _resync(self, cluster_id: str | None = None) -> None:
        """Read every record at one revision (paged) and make the cache exactly that."""
        started = time.monotonic()
        records: dict[str, tuple[bytes, int]] = {}
        passwords: dict[str, tuple[bytes, int]] = {}
        key, revision = self._root, 0
        while True:
            options = {"limit": RESYNC_PAGE}
            if revision:
                options["revision"] = revision
            reply = self.client.range(key, self._end, **options)
            if not revision:
                revision = int(reply["header"]["revision"])
                cluster_id = str(reply["header"].get("cluster_id", cluster_id or ""))
            kvs = reply.get("kvs", [])
            for kv in kvs:
                kind, name = self._kind(unb64(kv["key"]).decode())
                if kind is not None:
                    kind_of = records if kind == self._records else passwords
                    kind_of[name] = (unb64(kv.get("value", "")), int(kv["mod_revision"]))
            if not reply.get("more") or not kvs:
                break
            key = unb64(kvs[-1]["key"]).decode() + "\0"
        self.cache.replace_all(records, revision, source=self._root,
                               cluster_id=cluster_id or "", passwords=passwords)
        self.state.resyncs += 1
        self.state.records = len(records)
        self._advanced(revision)
        self._connected()
        log.info("fleet cache %s resynchronised: %d records at revision %d in %.2f s",
                 self.cache_path, len(records), revision, time.monotonic() - started)

    def _follow(self) -> bool:
        """Apply watch responses until the stream ends; True if a resync is needed."""
        for result in self.client.watch(self._root, self._end, self.state.revision + 1):
            if self._stop.is_set():
                return False
            if result.get("compact_revision") and result.get("canceled"):
                log.warning("fleet cache %s: etcd compacted past revision %d; "
                            "resynchronising", self.cache_path, self.state.revision)
                return True
            if result.get("canceled"):
                return True
            if result.get("created"):
                self._resumed()
                self._connected()
                continue
            changes, passwords, revision = [], [], 0
            for event in result.get("events", []):
                kv = event["kv"]
                kind, name = self._kind(unb64(kv["key"]).decode())
                revision = max(revision, int(kv["mod_revision"]))
                if kind is None:
                    continue
                deleted = event.get("type") == "DELETE"
                (changes if kind == self._records else passwords).append(
                    (name, None if deleted else unb64(kv.get("value", "")),
                     int(kv["mod_revision"])))
            if revision:
                with self._queue_changed:
                    self._queue.append((changes, passwords, revision))
                    self._queue_changed.notify_all()
            self._connected()
        return False

    def _resumed(self) -> None:
        """A watch is up: say so if it replaces one lost on another member."""
        lost, self._lost = self._lost, None
        if lost is None:
            log.info("fleet watch on member %s from revision %d", self.client.watch_member,
                     self.state.revision + 1)
        elif lost[0] != self.client.watch_member:
            log.warning("fleet store member %s lost (%s); watch resumed on %s from "
                        "revision %d", lost[0], lost[1], self.client.watch_member,
                        self.state.revision + 1)

    # -- applier ------------------------------------------------------------------

    def _apply_loop(self) -> None:
        while True:
            with self._queue_changed:
                while not self._queue and not self._stop.is_set():
                    self._queue_changed.wait()
                if self._stop.is_set():
                    return
                batch, self._queue = self._queue, []
                self._applying = True
            try:
                self._apply(batch)
            except Exception:  # kept for the next attempt: the cache stays as it was
                log.exception("fleet cache %s: applying %d watch responses failed; "
                              "retrying", self.cache_path, len(batch))
                with self._queue_changed:
                    self._queue[:0] = batch
                self._stop.wait(RETRY_S)
            finally:
                with self._queue_changed:
                    self._applying = False
                    self._queue_changed.notify_all()

    def _apply(self, batch: list[tuple[list, list, int]]) -> None:
        changes = [c for item in batch for c in item[0]]
        passwords = [p for item in batch for p in item[1]]
        revision = max(item[2] for item in batch)
        self.cache.apply(changes, revision, passwords)
        if changes:
            self.state.records = self.cache.records()
        self._advanced(revision)

    def _drain(self) -> None:
        """Wait until every queued response is in the cache (or stop)."""
        with self._queue_changed:
            while (self._queue or self._applying) and not self._stop.is_set():
                self._queue_changed.wait(RETRY_S)

    def _kind(self, key: str) -> tuple[str | None, str]:
        """(the sub-prefix `key` is under, or None for a key of neither kind; the id)."""
        for kind in (self._records, self._passwords):
            if key.startswith(kind):
                return kind, key[len(kind):]
        return None, key

    # -- poller -------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            try:
                reply = self.client.range(self._root, self._end, limit=1, keys_only=True,
                                          sort_order="DESCEND", sort_target="MOD")
            except (EtcdUnavailable, EtcdError) as exc:
                self._failed_polls += 1
                if self._failed_polls < POLL_FAILURES_TO_DISCONNECT:
                    continue  # an election after a member loss; the watch may be fine
                if self.state.connected:
                    self.client.close_watch()  # the watcher reconnects, elsewhere if need be
                self._disconnected(str(exc))
                continue
            self._failed_polls = 0
            kvs = reply.get("kvs", [])
            newest = int(kvs[0]["mod_revision"]) if kvs else 0
            self.state.newest = max(self.state.newest, newest)
            if self.state.lag:
                self._stalled_polls += 1
                if self._stalled_polls >= STALL_POLLS:
                    log.warning("fleet watch is %d revisions behind and not moving; "
                                "reconnecting", self.state.lag)
                    self._stalled_polls = 0
                    self.client.close_watch()
            else:
                self._stalled_polls = 0

    # -- state --------------------------------------------------------------------

    def _advanced(self, revision: int) -> None:
        self.state.revision = revision
        self.state.newest = max(self.state.newest, revision)
        self._stalled_polls = 0

    def _connected(self) -> None:
        if not self.state.connected:
            self.state.connected = True
            self.state.last_error = ""
            log.info("fleet store %s connected; cache at revision %d",
                     self.target.describe(), self.state.revision)
        self._synced.set()

    def _disconnected(self, error: str) -> None:
        """No member answers (each was tried): the one case worth an ERROR."""
        if self.state.connected or not self.state.last_error:
            log.error("fleet store unreachable: %s; serving the %d cached records",
                      error, self.state.records)
        self.state.connected = False
        self.state.last_error = error
