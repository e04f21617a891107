"""The snapshot holds bindings only; whole records load lazily into a bounded cache."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc

import pytest

from tests.keys import ED25519
from transparent_md.identity import Guest
from transparent_md.store import (
    Instance,
    PasswordAlreadySet,
    SqliteStore,
    open_store,
    parse_record,
)
from transparent_md.store.cache import EntryCache
from transparent_md.store.snapshot import Binding, Entry

IDLE_RECORDS = 10_000
# What one idle record may cost in a snapshot. Measured ~330 B: one slots object, the
# id and MAC strings, its slots in the id dict and the MAC index. A parsed record with
# ~200 B of user-data and a key costs ~1.5 KB (the old snapshot), so this bound fails
# as soon as any part of the whole record is held again, yet leaves ~50% headroom for
# allocator and Python-version differences.
MAX_IDLE_BYTES_PER_RECORD = 512


def guest(n: int) -> Guest:
    return Guest(bridge="br0", port=f"tap{n}", ifindex=n + 1, mac=mac(n), ip="10.0.0.5")


def mac(n: int) -> str:
    return f"02:10:{n >> 16:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}:01"


def record(n: int, **extra) -> dict:
    return {"instance_id": f"i-{n}", "mac": mac(n), "user_data": "#cloud-config\n" + "x" * 200,
            "ssh_keys": {"k": f"{ED25519} " + "b" * 60}, **extra}


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "i.db")


def test_ten_thousand_idle_records_cost_only_their_bindings(path):
    with_records(path, [record(n) for n in range(IDLE_RECORDS)])
    reader = open_store(path)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        snapshot = reader.snapshot()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(snapshot.bindings) == IDLE_RECORDS
    assert len(reader.cache) == 0  # nothing whole is loaded until a guest asks
    assert held < IDLE_RECORDS * MAX_IDLE_BYTES_PER_RECORD, f"{held / IDLE_RECORDS:.0f} B/record"
    reader.close()


def test_a_match_loads_the_whole_record_once_and_keeps_it(path):
    with_records(path, [record(0, hostname="zero"), record(1)])
    store = open_store(path)
    entry = store.entry_for(guest(0))
    assert entry.instance.hostname == "zero"
    assert entry.instance.user_data.startswith(b"#cloud-config")
    assert store.entry_for(guest(0)) is entry  # a hit: the same object, prepared memo and all
    assert store.entry_for(guest(7)) is None
    assert list(store.cache) == ["i-0"]
    store.close()


def test_a_record_changed_after_it_was_cached_is_served_new(path):
    with_records(path, [record(0, hostname="old")])
    reader, writer = open_store(path), open_store(path)
    cached = reader.entry_for(guest(0))
    cached.prepared["memo"] = "rendered for the old revision"
    writer.update(parse_record(record(0, hostname="new")))
    fresh = reader.entry_for(guest(0))
    assert fresh.instance.hostname == "new"
    assert fresh.revision > cached.revision
    assert fresh.prepared == {}  # nothing rendered for the old revision survives
    assert len(reader.cache) == 1  # the new revision replaced the old one
    reader.close()
    writer.close()


def test_a_commit_whose_stamp_is_not_seen_yet_is_still_read_whole(path):
    """A row newer than the snapshot forces a reload in one transaction, never a mix."""
    with_records(path, [record(0, hostname="old"), record(1)])
    reader = open_store(path)
    reader.snapshot()
    moved = parse_record(record(0, hostname="moved", mac=mac(9)))
    raw_write(path, moved)  # committed, but no generation stamp: the reader cannot know
    assert reader.entry_for(guest(0)) is None  # the record left this guest: never served
    entry = reader.entry_for(guest(9))
    assert entry.instance.hostname == "moved"
    reader.close()


def test_the_cache_bound_evicts_least_recent_and_reloads(path):
    with_records(path, [record(n) for n in range(3)])
    store = SqliteStore(path, cache_size=2)
    first = store.entry_for(guest(0))
    store.entry_for(guest(1))
    store.entry_for(guest(0))  # touch: i-1 is now the least recent
    store.entry_for(guest(2))
    assert list(store.cache) == ["i-0", "i-2"]  # least recent first
    reloaded = store.entry_for(guest(1))
    assert reloaded.instance == parse_record(record(1))
    assert list(store.cache) == ["i-2", "i-1"]
    again = store.entry_for(guest(0))
    assert again is not first and again.instance == first.instance
    store.close()


def test_cache_get_hits_only_the_same_revision():
    cache = EntryCache(limit=1)
    entry = Entry(parse_record(record(0)), revision=5)
    cache.put("i-0", entry)
    assert cache.get(binding("i-0", 5)) is entry
    assert cache.get(binding("i-0", 6)) is None
    with pytest.raises(ValueError):
        EntryCache(limit=0)


def test_password_is_read_live_stays_write_once_and_reloads_nothing(path):
    with_records(path, [record(0)])
    store = open_store(path)
    reader = open_store(path)
    assert reader.password("i-0") is None
    before = reader.snapshot()
    cached = reader.entry_for(guest(0))
    store.set_password_once("i-0", "pw")
    assert reader.password("i-0") == "pw"
    # Setting it changed no revision and stamped nothing: same snapshot, same entry.
    assert reader.snapshot() is before and reader.entry_for(guest(0)) is cached
    with pytest.raises(PasswordAlreadySet):
        store.set_password_once("i-0", "again")
    store.update(parse_record(record(0, hostname="h")))
    assert reader.entry_for(guest(0)).instance.hostname == "h"
    assert reader.password("i-0") == "pw"
    store.close()
    reader.close()


def test_a_store_file_without_binding_columns_is_upgraded_on_open(path):
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE instances (instance_id TEXT PRIMARY KEY, record TEXT NOT NULL,
                                revision INTEGER NOT NULL, password TEXT);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters VALUES ('revision', 1);
    """)
    instance = parse_record(record(0, bridge="br0"))
    old.execute("INSERT INTO instances VALUES (?, ?, 1, 'kept')",
                (instance.instance_id, json.dumps(instance.to_mapping())))
    old.commit()
    old.close()
    store = open_store(path)
    entry = store.entry_for(guest(0))
    assert entry.instance == instance and store.password("i-0") == "kept"
    store.close()


# -- helpers ---------------------------------------------------------------------------

def with_records(path: str, raw: list[dict]) -> None:
    store = open_store(path)
    store.put_many([parse_record(r) for r in raw])
    store.close()


def raw_write(path: str, instance: Instance) -> None:
    """Commit a new revision as another writer would, minus the generation stamp."""
    db = sqlite3.connect(path)
    db.execute("UPDATE instances SET record = ?, revision = revision + 100, mac = ? "
               "WHERE instance_id = ?",
               (json.dumps(instance.to_mapping()), instance.mac, instance.instance_id))
    db.commit()
    db.close()


def binding(instance_id: str, revision: int) -> Binding:
    return Binding(instance_id, revision, None, "10.0.0.5", None, None)
