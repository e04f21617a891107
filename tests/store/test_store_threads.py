"""One serving store used from two threads while another process writes all the time.

The daemon's serving loop and its status thread read the same store object; both reload
when the store changes. Here a "loop" thread asks for guests' records (snapshot and
entry_for, as the responder does) and a "status" thread counts records (snapshot, as
`status` does), while a writer process changes records hundreds of times a second.
Before one lock guarded the connection, the two threads ran statements on it at once:
"cannot start a transaction within a transaction", and reloads cut short.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from transparent_md.daemon.store_source import open_serving_store
from transparent_md.identity import Guest
from transparent_md.store import open_store, parse_record
from transparent_md.store.errors import StoreBusy

REPO = str(Path(__file__).resolve().parents[2])
SHM = "/dev/shm"
RECORDS = 50
# Changes the two threads must live through: a few seconds' worth at the hundreds a
# second the writer reaches on tmpfs; a loaded machine just takes longer to make them.
WRITES = 800
RUN_TIMEOUT_S = 240.0
# The status thread asks this often (the daemon's asks far less often; this is a storm).
STATUS_PAUSE_S = 0.001
START_TIMEOUT_S = 60

# Changes one record's hostname per transaction, as fast as it can, WRITES times or until
# stopped; prints the number of writes on exit.
WRITER = textwrap.dedent("""
    import os, sys, time
    from transparent_md.store import open_store
    from transparent_md.store.record import parse_record
    path, go, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    records, writes = int(sys.argv[4]), int(sys.argv[5])
    store = open_store(path)
    current = {e.instance.instance_id: e.instance for e in store.entries()}
    open(go, "w").close()
    n = 0
    while n < writes and not os.path.exists(stop):
        i = n % records
        base = current[f"i-{i}"].to_mapping()
        base["hostname"] = f"h-{n}"
        store.put_many([parse_record(base)])
        n += 1
    print(n)
""")


def mac(i: int) -> str:
    return f"52:54:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


@pytest.fixture
def shm_dir():
    """A directory on tmpfs: commits without a disk's fsync, so the writer reaches
    hundreds a second on a loaded machine (on disk it does about fifty here)."""
    path = tempfile.mkdtemp(prefix="tmd-threads-", dir=SHM)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_loop_and_status_threads_reload_while_records_change_hundreds_a_second(shm_dir):
    tmp_path = shm_dir
    path = str(tmp_path / "instances.db")
    writer_store = open_store(path)
    writer_store.put_many([parse_record({"instance_id": f"i-{i}", "mac": mac(i)})
                           for i in range(RECORDS)])
    writer_store.close()
    go, stop = tmp_path / "go", tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, str(go), str(stop),
                               str(RECORDS), str(WRITES)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": REPO})
    store = open_serving_store(path)
    errors: list[BaseException] = []
    counts = {"loop": 0, "status": 0, "served": 0, "busy": 0}
    done = threading.Event()

    def loop() -> None:
        i = 0
        while not done.is_set():
            try:
                snapshot = store.snapshot()
                guest = Guest(bridge="br0", port="p0", ifindex=2, mac=mac(i % RECORDS),
                              ip="10.0.0.2")
                entry = store.entry_for(guest)
                assert len(snapshot.bindings) == RECORDS
                assert entry is not None and entry.instance.instance_id == f"i-{i % RECORDS}"
                counts["served"] += 1
            except StoreBusy:
                counts["busy"] += 1
            except BaseException as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(exc)
                return
            counts["loop"] += 1
            i += 1

    def status() -> None:
        while not done.is_set():
            try:
                assert len(store.snapshot().bindings) == RECORDS
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
            counts["status"] += 1
            time.sleep(STATUS_PAUSE_S)

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not go.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "writer did not start"
            time.sleep(0.01)
        threads = [threading.Thread(target=loop), threading.Thread(target=status)]
        for thread in threads:
            thread.start()
        writes = int(writer.communicate(timeout=RUN_TIMEOUT_S)[0])
        done.set()
        for thread in threads:
            thread.join(30)
    finally:
        done.set()
        stop.touch()
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        store.close()
    assert not errors, repr(errors[0])
    assert writes == WRITES
    assert counts["loop"] > 100 and counts["status"] > 100, counts
