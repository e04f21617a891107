"""Store: the instance registry the responder answers from.

`Store` is the small interface a fleet backend would implement; `SqliteStore` is the
embedded default, a single file at `DEFAULT_STORE_PATH` unless `--store PATH` says
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from transparent_md.identity import Guest
from transparent_md.store.errors import (
    PasswordAlreadySet,
    RecordConflict,
    StaleRevision,
    StoreMissing,
)
from transparent_md.store.etcd_url import EtcdTarget, EtcdTls, is_etcd_url, parse_etcd_url
from transparent_md.store.record import Instance, RecordError, parse_record
from transparent_md.store.snapshot import Binding, Entry, Snapshot
from transparent_md.store.sqlite import SqliteStore
from transparent_md.store.write_checks import MAX_PASSWORD_BYTES

# Where packaged state lives on Debian-like systems; created root-owned, mode 0700.
DEFAULT_STORE_PATH = "/var/lib/transparent-md/instances.db"


class Store(Protocol):
    """What the CLI and the responder need from an instance registry.

    `snapshot()` and `entry_for()` are on the request path: cheap when nothing changed
    (a stamp compare, dict lookups), and reflecting every committed change. The snapshot
    holds bindings only; `entry_for` loads a matched guest's whole record lazily.
    """

    path: str

    def snapshot(self) -> Snapshot: ...
    def refresh(self) -> Snapshot: ...
    def entry_for(self, guest: Guest) -> Entry | None: ...
    def get(self, instance_id: str) -> Instance | None: ...
    def list(self) -> list[Instance]: ...
    def entry(self, instance_id: str) -> Entry | None: ...
    def entries(self) -> list[Entry]: ...
    def add(self, instance: Instance) -> None: ...
    def update(self, instance: Instance) -> None: ...
    def modify(self, instance_id: str, change: Callable[[Instance], Instance], *,
               clear_password: bool = False) -> Instance: ...
    def put_many(self, instances: Iterable[Instance], *, replace: bool = True,
                 prune: bool = False, expect: Mapping[str, int | None] | None = None,
                 remove: Iterable[str] = ()) -> dict[str, int]: ...
    def remove(self, *instance_ids: str, missing_ok: bool = False,
               expect: Mapping[str, int | None] | None = None) -> list[str]: ...
    def set_password_once(self, instance_id: str, password: str) -> None: ...
    def clear_password(self, instance_id: str) -> None: ...
    def password(self, instance_id: str) -> str | None: ...
    def close(self) -> None: ...


def open_store(path: str | EtcdTarget | None, tls: EtcdTls | None = None, *,
               create: bool = True) -> Store:
    """Open the store `path` names: an `EtcdTarget` or `etcd://HOST:PORT[,...]/PREFIX`
    (the fleet store, with `tls` files if given), else a SQLite file, by default
    DEFAULT_STORE_PATH. A missing SQLite file is created, or with `create=False` refused
    (StoreMissing) before anything, not even its directory, is made. The etcd client is
    imported only for etcd."""
    if isinstance(path, EtcdTarget) or is_etcd_url(path):
        from transparent_md.store.etcd import EtcdStore

        target = path if isinstance(path, EtcdTarget) else parse_etcd_url(path, tls)
        return EtcdStore(target)
    path = path or DEFAULT_STORE_PATH
    if not create and not store_exists(path):
        raise StoreMissing(path)
    return SqliteStore(path)


def store_exists(path: str | EtcdTarget | None) -> bool:
    """Whether the store `path` names holds a store already (etcd always may)."""
    return (isinstance(path, EtcdTarget) or is_etcd_url(path)
            or os.path.exists(path or DEFAULT_STORE_PATH))


__all__ = [
    "Binding", "DEFAULT_STORE_PATH", "EtcdTls", "Entry", "Instance", "MAX_PASSWORD_BYTES",
    "PasswordAlreadySet", "RecordConflict", "RecordError", "Snapshot", "SqliteStore",
    "StaleRevision", "Store", "StoreMissing", "open_store", "parse_record", "store_exists",
]
