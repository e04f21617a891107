"""Where a VM-manager hook writes: the store file, or a running daemon's admin API.

Both write a domain's records in one transaction (a merge patch per record, creating
absent ones) and, at stop, park each record (served to nobody) or remove the records;
a record that is already gone is no error.
"""

from __future__ import annotations

from typing import Any

from transparent_md.api import operations


class StoreWriter:
    def __init__(self, path: str | None) -> None:
        from transparent_md.store import open_store

        self.store = open_store(path)

    def upsert(self, patches: dict[str, dict[str, Any]]) -> None:
        operations.patch_many(self.store, patches)

    def stop(self, record_ids: list[str], *, remove: bool) -> None:
        if remove:
            self.store.remove(*record_ids, missing_ok=True)
            return
        for record_id in record_ids:
            try:
                operations.park(self.store, record_id)
            except operations.NotFound:
                continue


class ApiWriter:
    def __init__(self, socket_path: str) -> None:
        from transparent_md.api.client import ApiClient

        self.client = ApiClient(socket_path)

    def upsert(self, patches: dict[str, dict[str, Any]]) -> None:
        from transparent_md.api.client import raise_for

        raise_for(self.client.request("PATCH", "/v1/instances", patches))

    def stop(self, record_ids: list[str], *, remove: bool) -> None:
        from transparent_md.api.client import raise_for

        if remove:
            raise_for(self.client.request("PATCH", "/v1/instances",
                                          dict.fromkeys(record_ids)))
            return
        for record_id in record_ids:
            reply = self.client.request("DELETE", f"/v1/instances/{record_id}/binding")
            if reply.status != 404:
                raise_for(reply)
