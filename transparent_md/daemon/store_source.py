"""Where the daemon's responders read records from: the SQLite store itself, or, for an
etcd fleet store, a local SQLite cache that a `FleetFollower` keeps following etcd.

Either way the serving processes open one SQLite file, so the request path is the same
(a stamp compare, dict lookups) and never waits on etcd. This module is all the daemon
needs to know about the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from transparent_md.names import DaemonNames
from transparent_md.store.etcd_url import EtcdTarget, EtcdTls, is_etcd_url, parse_etcd_url

if TYPE_CHECKING:
    from transparent_md.store import Store

log = logging.getLogger(__name__)

# Beside the default SQLite store, on disk: the cache must outlive a reboot, so a host
# that boots while etcd is down still serves its guests (/run is tmpfs and would not).
CACHE_DIR = "/var/lib/transparent-md"


def default_cache_path(names: DaemonNames) -> str:
    """One cache per daemon: `cache-<name>-<netns inode>.db` (the daemon id), so two
    daemons of the same name in different namespaces never share one; the host
    namespace's inode is fixed, so a host daemon's cache survives restarts and reboots."""
    return f"{CACHE_DIR}/cache-{names.daemon_id}.db"


class StoreSource:
    """Opens what the daemon serves from; `start()` returns the SQLite path to serve."""

    def __init__(self, store: str | None, names: DaemonNames, *,
                 tls: EtcdTls | None = None, cache_path: str | None = None) -> None:
        self.store = store
        self.fleet = is_etcd_url(store)
        # Parsed once, here: what the follower, the admin API and the workers get.
        self.target: EtcdTarget | None = (parse_etcd_url(store, tls)
                                          if self.fleet and store else None)
        self.cache_path = cache_path or default_cache_path(names)
        self._names = names
        self.follower = None

    def start(self) -> str | None:
        """Check the store (a bad one fails before anything is attached) or start
        following the fleet; returns the path the responders open."""
        if not self.fleet:
            from transparent_md.store import DEFAULT_STORE_PATH, open_store, store_exists

            if not store_exists(self.store):
                log.warning("instance store %s does not exist: serving a new empty store, "
                            "so every guest gets 404 until records are added (check --store)",
                            self.store or DEFAULT_STORE_PATH)
            open_store(self.store).close()
            return self.store
        from transparent_md.store.fleet_follower import FleetFollower

        assert self.target is not None
        self.follower = FleetFollower(self.target, self.cache_path,
                                      spread_key=self._names.daemon_id)
        self.follower.start()
        return self.cache_path

    def serving_fields(self) -> dict:
        """ServeSpec fields that let every serving process write a guest's posted
        password to the fleet (see `open_serving_store`); none for SQLite."""
        if self.target is None:
            return {}
        return {"fleet_target": self.target.as_dict()}

    def open_store(self) -> Store:
        """The store writers use (the admin API): the fleet's etcd, or the SQLite file."""
        from transparent_md.store import open_store

        return open_store(self.target or self.store)

    def status(self) -> dict:
        """store_connected, store_revision_lag... for `status`; empty for SQLite."""
        return self.follower.status() if self.follower else {}

    def collectors(self) -> list:
        return [FleetCollector(self.follower)] if self.follower else []

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower = None


def open_serving_store(store_path: str | None, fleet_target: dict | None = None) -> Store:
    """The store a serving process answers from: `store_path` (SQLite, or the fleet
    cache), and for a fleet the cache with guest passwords written through to etcd."""
    if fleet_target is None:
        from transparent_md.store import DEFAULT_STORE_PATH
        from transparent_md.store.sqlite import SqliteStore

        # The serving loop waits only briefly for another process's lock (see LockWait).
        return SqliteStore(store_path or DEFAULT_STORE_PATH, serving=True)
    from transparent_md.store.fleet_serving import FleetCacheStore

    assert store_path is not None  # the cache path StoreSource.start() returned
    return FleetCacheStore(store_path, EtcdTarget.from_dict(fleet_target))


class FleetCollector:
    """Prometheus: transparent_md_store_connected, _store_revision_lag, _store_revision."""

    def __init__(self, follower) -> None:
        self._follower = follower

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self._follower.state
        yield GaugeMetricFamily("transparent_md_store_connected",
                                "1 while the fleet store (etcd) answers; 0: serving the "
                                "local cache as it is", value=int(state.connected))
        yield GaugeMetricFamily("transparent_md_store_revision_lag",
                                "etcd revisions of record changes not yet in the local "
                                "cache (0: caught up)", value=state.lag)
        yield GaugeMetricFamily("transparent_md_store_revision",
                                "the etcd revision the local cache reflects",
                                value=state.revision)
        yield CounterMetricFamily("transparent_md_store_resyncs",
                                  "full reads of the fleet store into the cache (start, "
                                  "compaction, another cluster)", value=state.resyncs)


def render_store_line(status: dict) -> str | None:
    """The `status` line for a fleet store; None for SQLite."""
    if "store_connected" not in status:
        return None
    state = "connected" if status["store_connected"] else (
        f"DISCONNECTED ({status.get('store_error') or 'unreachable'}), serving the cache")
    return (f"store: {status.get('store')} {state}; cache revision "
            f"{status.get('store_revision')}, lag {status.get('store_revision_lag')}; "
            f"cache {status.get('store_cache')}")
