"""Snapshots read incrementally and loaded off the serving loop (issue 26)."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

from transparent_md.identity import Guest
from transparent_md.store import SqliteStore, parse_record
from transparent_md.store.bindings_reader import BindingsReader
from transparent_md.store.snapshot import Snapshot

# How long a change may take to be swapped in here (the loader polls every few ms).
SEEN_WITHIN_S = 5.0


def mac(n: int) -> str:
    return f"02:00:00:00:{n >> 8 & 255:02x}:{n & 255:02x}"


def record(n: int, **fields) -> object:
    return parse_record({"instance_id": f"i-{n}", "mac": mac(n), **fields})


def guest(n: int) -> Guest:
    return Guest(bridge="br0", port="p0", ifindex=1, mac=mac(n), ip="10.0.0.1")


def full_read(path: str) -> Snapshot:
    reader = BindingsReader(path)
    db = sqlite3.connect(path)
    try:
        return reader.read(db)
    finally:
        db.close()


def same(a: Snapshot, b: Snapshot, probes: range) -> bool:
    if {i: x.revision for i, x in a.bindings.items()} != {
            i: x.revision for i, x in b.bindings.items()}:
        return False
    return all((a.match(guest(n)) and a.match(guest(n)).instance_id)
               == (b.match(guest(n)) and b.match(guest(n)).instance_id) for n in probes)


def test_incremental_reads_equal_full_reads_through_adds_moves_and_removals(tmp_path):
    path = str(tmp_path / "i.db")
    writer = SqliteStore(path)
    reader = SqliteStore(path)
    rng = random.Random(26)
    try:
        writer.put_many([record(n) for n in range(50)])
        for _ in range(120):
            action = rng.choice(["update", "move", "remove", "add"])
            n = rng.randrange(80)
            ids = {r.instance_id for r in writer.list()}
            if action == "remove" and f"i-{n}" in ids:
                writer.remove(f"i-{n}")
            elif action == "move" and f"i-{n}" in ids:
                free = next(m for m in range(200, 400) if mac(m) not in
                            {r.mac for r in writer.list()})
                writer.put_many([parse_record({"instance_id": f"i-{n}", "mac": mac(free)})])
            elif action != "remove" and (f"i-{n}" in ids or mac(n) not in {
                    r.mac for r in writer.list()}):
                writer.put_many([record(n, hostname=f"h{rng.random()}")])
            assert same(reader.snapshot(), full_read(path), range(400))
    finally:
        writer.close()
        reader.close()


def test_the_serving_loop_never_waits_for_a_writer_holding_the_lock(tmp_path):
    """A writer holds the file's lock for a second: snapshot() and the cached guest's
    entry answer at once all along, and the change is swapped in after the commit."""
    path = str(tmp_path / "i.db")
    writer = SqliteStore(path)
    writer.put_many([record(1, hostname="old")])
    serving = SqliteStore(path)
    serving.load_snapshots_in_background()
    try:
        assert serving.entry_for(guest(1)).instance.hostname == "old"
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        released = threading.Timer(1.0, holder.execute, ("ROLLBACK",))
        released.start()
        slowest = 0.0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            serving.snapshot()
            assert serving.entry_for(guest(1)).instance.hostname == "old"
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.01)
        released.join()
        holder.close()
        assert slowest < 0.05, slowest
        writer.put_many([record(1, hostname="new")])
        deadline = time.monotonic() + SEEN_WITHIN_S
        while serving.entry_for(guest(1)).instance.hostname != "new":
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        serving.close()
        writer.close()


def test_snapshots_swapped_in_while_records_change_hundreds_of_times_a_second(tmp_path):
    """Readers on two threads (a serving loop and a status thread) while a writer
    changes records as fast as it can: no error, and every change arrives."""
    path = str(tmp_path / "i.db")
    writer = SqliteStore(path)
    writer.put_many([record(n) for n in range(200)])
    serving = SqliteStore(path)
    serving.load_snapshots_in_background()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                assert len(serving.snapshot().bindings) == 200
                assert serving.entry_for(guest(7)) is not None
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for n in range(300):
            writer.put_many([record(n % 200, hostname=f"w{n}")])
        deadline = time.monotonic() + SEEN_WITHIN_S
        while serving.entry_for(guest(299 % 200)).instance.hostname != "w299":
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        serving.close()
        writer.close()
    assert not errors, errors[0]


def test_a_record_written_before_its_guest_asks_answers_it_at_once(tmp_path):
    """Read-your-writes: the writer was told the record is stored, so its guest asking
    right after is answered even before the loader publishes (a few rows read)."""
    path = str(tmp_path / "i.db")
    writer = SqliteStore(path)
    writer.put_many([record(1)])
    serving = SqliteStore(path)
    serving.load_snapshots_in_background()
    try:
        for n in range(2, 40):
            writer.put_many([record(n)])
            entry = serving.entry_for(guest(n))
            assert entry is not None and entry.instance.instance_id == f"i-{n}"
    finally:
        serving.close()
        writer.close()
