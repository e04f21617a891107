"""Red team, issue 20 follow-up: a damaged MAC lock file must not keep the daemon down.

docs/hostile-guests.md says a lock file that cannot be read is logged and ignored. A
file that parses as JSON but carries one bad entry (a MAC that is not six octets, a
waiting time no clock reaches: a corrupted or hand-edited file) used to pass the reader
and fail the restore before the first port was attached: the daemon did not start, and
every guest on the host went unanswered. Now each bad entry is dropped with one log
line, the good locks come back, and a neighbour copying the victim's MAC still reads
nothing.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import write_records
from tests.hostile.test_lock_lifecycle import (
    assert_served,
    leaks,
    locks_now,
    read_everything,
    secret_record,
)
from tests.hostile.world import build_world

pytestmark = pytest.mark.netns

# Bad entries on the victim's own port (so the restore gets as far as using them).
BAD_MACS = ["zz:00:00:00:00:01", "02:00:00:00:00", "02:00:00:00:00:100"]
BAD_TIME = -1e308


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("lockfile"))
    victim = w.add_guest("victim", "br0", record=False)
    write_records(w.store, [secret_record("victim", victim)])
    w.start()
    yield w
    w.stop()


def locks_file(w) -> str:
    res = w.topo.sh(w.hv.ns, [sys.executable, "-c", "from transparent_md.names import "
                              "DaemonNames; print(DaemonNames.here().locks_file)"])
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.parametrize("damage", ["bad-mac", "bad-time"])
def test_a_bad_lock_file_entry_is_dropped_and_the_daemon_serves(world, damage):
    w = world
    victim = w.guests["victim"]
    assert_served(w, "victim")
    before = locks_now(w)
    assert (victim.mac, victim.port, "br0") in before
    w.stop()  # a clean stop writes the file
    path = locks_file(w)
    with open(path, encoding="utf-8") as saved:
        body = json.load(saved)
    (held,) = [lock for lock in body["locks"] if lock["mac"] == victim.mac]
    if damage == "bad-mac":
        body["locks"] += [{**held, "mac": mac} for mac in BAD_MACS]
    else:
        body["waiting"].append({**held, "ip": "10.0.0.9", "first_asked": BAD_TIME,
                                "last_asked": BAD_TIME})
    with open(path, "w", encoding="utf-8") as out:
        json.dump(body, out)

    w.start()  # used to die restoring the locks: no guest answered
    assert locks_now(w) == before, w.log_tail()
    assert_served(w, "victim")
    copier = f"cp-{damage}"
    w.add_guest(copier, "br0", record=False, mac=victim.mac, ip=victim.ip)
    assert leaks(read_everything(w, copier, "victim"), "victim") == []
    assert_served(w, "victim")
