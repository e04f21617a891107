"""Issue 13, acceptance 1 and 4 on a 3-member etcd cluster: a change reaches both
daemons within 1 s, and killing one member (the one every client tries first) goes
unnoticed by guests looping on the metadata service and by a writer updating a record
all along."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.fleet.fleet_world import Fleet

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PROPAGATION_BOUND_S = 1.0
# How long the guests and the writer keep going around the kill.
LOOP_S = 6.0
GUEST_LOOP = r"""
import json, sys, time, urllib.request
ok = failed = 0
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen("http://169.254.169.254/latest/meta-data/instance-id",
                                    timeout=2) as reply:
            ok += reply.read() == sys.argv[2].encode()
    except Exception:
        failed += 1
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed}))
"""
WRITER_LOOP = r"""
import json, sys, time
import dataclasses
from transparent_md.store import open_store
store = open_store(sys.argv[1])
ok, failed = 0, []
deadline = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < deadline:
    n += 1
    try:
        store.modify("i-one", lambda r: dataclasses.replace(r, hostname=f"h{n}"))
        ok += 1
    except Exception as exc:
        failed.append(str(exc))
    time.sleep(0.1)
print(json.dumps({"ok": ok, "failed": failed, "last": f"h{n}"}))
"""


@pytest.fixture(scope="module")
def fleet(topology, tmp_path_factory):
    fleet = Fleet(topology, tmp_path_factory.mktemp("cluster"), members=3)
    fleet.start_daemon(0)
    fleet.start_daemon(1)
    yield fleet
    fleet.stop()


def test_three_member_cluster_add_reaches_both_within_a_second(fleet):
    fleet.add("i-one", "--mac", fleet.hvs[0].guests["g1"].mac)
    fleet.add("i-two", "--mac", fleet.hvs[1].guests["g2"].mac)
    took = fleet.wait_cached("i-two", [0, 1], timeout=5.0)
    assert took < PROPAGATION_BOUND_S, took
    assert fleet.served(0) == (200, "i-one")
    assert fleet.served(1) == (200, "i-two")


def test_one_member_killed_nothing_noticed(fleet):
    guests = [fleet.topo.spawn(hv.guests[f"g{i + 1}"].ns,
                               [sys.executable, "-c", GUEST_LOOP, str(LOOP_S), f"i-{word}"],
                               stdout=subprocess.PIPE, text=True)
              for i, (hv, word) in enumerate(zip(fleet.hvs, ("one", "two"), strict=True))]
    writer = fleet.topo.spawn(fleet.hvs[1].ns,
                              [sys.executable, "-c", WRITER_LOOP, fleet.url, str(LOOP_S)],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(LOOP_S / 3)
    fleet.etcd.kill_member(fleet.etcd.members[0])  # the endpoint everyone tries first
    guest_counts = [json.loads(g.communicate(timeout=LOOP_S + 30)[0]) for g in guests]
    written = json.loads(writer.communicate(timeout=LOOP_S + 60)[0])
    for counts in guest_counts:
        assert counts["failed"] == 0 and counts["ok"] > 0, counts
    assert written["failed"] == [] and written["ok"] > 0, written
    # Both daemons followed every write, the last one included, through the kill.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [fleet.cached_record(i, "i-one") or "" for i in (0, 1)]
        if all(f'"{written["last"]}"' in r for r in records):
            break
        time.sleep(0.05)
    assert all(f'"{written["last"]}"' in r for r in records), (written, records)
    fleet.add("i-three", "--mac", "02:00:00:00:09:09")
    took = fleet.wait_cached("i-three", [0, 1], timeout=5.0)
    assert took < PROPAGATION_BOUND_S, took
    assert all(fleet.metrics(i)["transparent_md_store_connected"] == 1 for i in (0, 1))
