"""The serving daemon and its store file, from guest namespaces: `ready` means served,
a write lock held by another process stalls no one for long, and a generation file cut
short or removed neither kills the daemon nor hides later changes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import write_records
from transparent_md.lab.hypervisor import Hypervisor
from transparent_md.store import open_store

pytestmark = pytest.mark.netns

PATH = "/latest/meta-data/instance-id"
# Records besides the guests': enough that loading the snapshot takes a while.
FILLER_RECORDS = 3000
# The promises under test.
CACHED_P99_S = 0.1
UNCACHED_ANSWER_S = 1.0
LOCK_HELD_S = 4.0

# Asks for the instance-id every 50 ms on new connections for `seconds`; prints
# {"latencies": [...], "statuses": {...}} (latency of every answer, in seconds).
TIMED_LOOP = textwrap.dedent("""
    import http.client, json, sys, time
    seconds = float(sys.argv[1])
    latencies, statuses = [], {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
            conn.request("GET", "/latest/meta-data/instance-id")
            status = conn.getresponse().status
            conn.close()
        except OSError as exc:
            status = type(exc).__name__
        latencies.append(time.monotonic() - started)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        time.sleep(0.05)
    print(json.dumps({"latencies": latencies, "statuses": statuses}))
""")
# Holds the store's exclusive lock until its stdin closes, as a stuck writer would.
HOLDER = textwrap.dedent("""
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    print("held", flush=True)
    sys.stdin.read()
    db.execute("ROLLBACK")
""")


def mac(i: int) -> str:
    return f"02:10:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    hv = Hypervisor(topology)
    hv.bridge("br0")
    for role, ip in (("cached", "10.0.0.10"), ("fresh", "10.0.0.11")):
        hv.guest(role, bridge="br0", port=f"p{role}", addr=f"{ip}/24",
                 routes=["169.254.169.254/32 dev eth0"])
    hv.store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(hv.store, [
        *({"instance_id": f"i-{role}", "mac": g.mac, "bridge": "br0"}
          for role, g in hv.guests.items()),
        *({"instance_id": f"i-filler-{i}", "mac": mac(i)} for i in range(FILLER_RECORDS))])
    return hv


def timed_loop(hv, role: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", hv.guests[role].ns, sys.executable, "-c",
                             TIMED_LOOP, str(seconds)], stdout=subprocess.PIPE, text=True)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_ready_means_the_store_is_served(hv):
    """The guest asks the moment the ready line is printed, on three starts."""
    for _ in range(3):
        daemon = hv.start_daemon(["br0"], hv.store)
        try:
            answer = hv.curl(hv.guests["cached"].ns, PATH)
        finally:
            assert daemon.stop() == 0
        assert answer == (200, "i-cached"), daemon.log()
        assert "Traceback" not in daemon.log()


def test_a_held_write_lock_stalls_no_guest(hv):
    daemon = hv.start_daemon(["br0"], hv.store)
    holder = None
    try:
        assert hv.curl(hv.guests["cached"].ns, PATH) == (200, "i-cached")  # now in memory
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, hv.store],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        # A writer's stamp lands too: every request now tries to reload the snapshot.
        stamp = os.open(hv.store + ".generation", os.O_WRONLY)
        os.pwrite(stamp, os.urandom(8), 0)
        os.close(stamp)
        loop = timed_loop(hv, "cached", LOCK_HELD_S)
        time.sleep(0.5)
        started = time.monotonic()
        status, _ = hv.curl(hv.guests["fresh"].ns, PATH, timeout=UNCACHED_ANSWER_S + 2)
        fresh_s = time.monotonic() - started
        cached = json.loads(loop.communicate(timeout=LOCK_HELD_S + 30)[0])
        assert holder.poll() is None  # the lock was held throughout
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait(30)
        try:
            assert hv.curl(hv.guests["fresh"].ns, PATH) == (200, "i-fresh")  # lock gone
        finally:
            daemon.stop()
    assert status in (200, 503) and fresh_s < UNCACHED_ANSWER_S, (status, fresh_s)
    assert set(cached["statuses"]) == {"200"}, cached["statuses"]
    assert p99(cached["latencies"]) < CACHED_P99_S, sorted(cached["latencies"])[-5:]
    log = daemon.log()
    assert "Traceback" not in log
    assert f"store {hv.store} is locked by another process" in log


def test_a_generation_file_cut_short_or_removed_under_a_serving_daemon(hv):
    daemon = hv.start_daemon(["br0"], hv.store)
    try:
        loop = timed_loop(hv, "cached", 4.0)
        time.sleep(0.5)
        os.truncate(hv.store + ".generation", 0)  # a mapped stamp: SIGBUS here
        time.sleep(1.0)
        store = open_store(hv.store)
        store.modify("i-cached", lambda r: dataclasses.replace(r, hostname="renamed"))
        store.close()
        assert hv.curl(hv.guests["cached"].ns, "/latest/meta-data/hostname") == (200, "renamed")
        os.unlink(hv.store + ".generation")
        time.sleep(1.5)  # the loop's file check (every second) opens the new one
        store = open_store(hv.store)
        store.modify("i-cached", lambda r: dataclasses.replace(r, hostname="again"))
        store.close()
        assert hv.curl(hv.guests["cached"].ns, "/latest/meta-data/hostname") == (200, "again")
        result = json.loads(loop.communicate(timeout=60)[0])
        assert daemon.proc.poll() is None, daemon.log()
    finally:
        daemon.stop()
    assert set(result["statuses"]) == {"200"}, result["statuses"]
    assert "Traceback" not in daemon.log()
