"""What a fleet daemon's serving processes answer from: the local cache, read exactly as a
SQLite store (the request path never waits on etcd), except for the one thing a guest
writes, its OpenStack password, which must be one value fleet-wide.

- POST: the password is created in etcd at PREFIX/passwords/<id> only if absent (a
  compare on its create revision), so a second post is refused with 409 on every
  hypervisor, and it follows the guest through a live migration. The serving loop is
  single-threaded, so this write is bounded: PASSWORD_WRITE_BUDGET_S over all members.
  With etcd unreachable the guest gets 503 (StoreUnavailable), and for
  UNAVAILABLE_BACKOFF_S afterwards further posts get 503 at once instead of waiting on
  etcd again: a boot storm of guests posting during an outage costs the loop one wait.
- GET: a local read of the cache's `fleet_passwords`, which the daemon's follower keeps
  following etcd (an operator's `--clear-password` reaches every daemon through it);
  during an outage the last known value is served.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from transparent_md.store.errors import StoreFault, StoreUnavailable
from transparent_md.store.etcd import EtcdStore
from transparent_md.store.etcd_client import EtcdClient
from transparent_md.store.etcd_url import EtcdTarget
from transparent_md.store.fleet_cache import (
    PASSWORDS_TABLE,
    SELECT_PASSWORD,
    remember_posted_password,
)
from transparent_md.store.sqlite import SqliteStore
from transparent_md.store.write_checks import check_password

log = logging.getLogger(__name__)

# The longest a password post may hold up the serving loop, split over the members
# (a dead member refuses at once; only a partitioned one uses its share). etcd commits a
# small transaction in milliseconds; this leaves room for a loaded host's fsync.
PASSWORD_WRITE_BUDGET_S = 1.0
# After etcd was found unreachable, posts are refused (503) without trying for this
# long: guests retry anyway, and the loop must not wait on etcd once per guest.
UNAVAILABLE_BACKOFF_S = 5.0
# How long the post waits for the follower's cache transaction before leaving the
# password to the follower (which brings it within milliseconds anyway).
CACHE_WRITE_WAIT_MS = 50


class FleetCacheStore(SqliteStore):
    """The fleet cache file as a Store, with guest passwords written through to etcd."""

    def __init__(self, cache_path: str, target: EtcdTarget, *,
                 client: EtcdClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(cache_path, serving=True)
        self.query(PASSWORDS_TABLE)  # the follower created it; a no-op then
        # requests times the connect and the reply separately: half the share each.
        per_member = PASSWORD_WRITE_BUDGET_S / len(target.endpoints) / 2
        self.fleet = EtcdStore(target, client or EtcdClient(target, timeout=per_member))
        self._clock = clock
        self._refused_until = 0.0
        self._last_error = ""

    def set_password_once(self, instance_id: str, password: str) -> None:
        """Create the password in etcd (PasswordAlreadySet if it exists anywhere in the
        fleet; StoreUnavailable while etcd is unreachable), then in the cache."""
        check_password(password)
        if self._clock() < self._refused_until:
            raise StoreUnavailable(f"not trying etcd again yet: {self._last_error}")
        try:
            revision = self.fleet.set_password_once(instance_id, password)
        except StoreUnavailable as exc:
            self._refused_until = self._clock() + UNAVAILABLE_BACKOFF_S
            self._last_error = str(exc)
            log.error("the password %s posted was refused (503): %s", instance_id, exc)
            raise
        self._refused_until = 0.0
        self._remember(instance_id, password, revision)

    def _remember(self, instance_id: str, password: str, revision: int) -> None:
        """The guest's next GET here sees its password even before the watch brings it."""
        with self._lock:
            self._set_busy_timeout(CACHE_WRITE_WAIT_MS)
            try:
                remember_posted_password(self, instance_id, password, revision)
            except (sqlite3.Error, StoreUnavailable, StoreFault) as exc:
                log.info("password of %s left to the follower: %s", instance_id, exc)
            finally:
                self._set_busy_timeout(self._busy_timeout_ms)

    def clear_password(self, instance_id: str) -> None:
        """Through etcd: the follower removes it from every daemon's cache."""
        self.fleet.clear_password(instance_id)

    def password(self, instance_id: str) -> str | None:
        rows = self.query(SELECT_PASSWORD, (instance_id,))
        return rows[0][0] if rows else None

    def close(self) -> None:
        self.fleet.close()
        super().close()
