"""Issue 26 on a real 3-member etcd with three daemons (admin API on):
1. 100 single-record writes a second for 30 s through one hypervisor's admin API while
   guests on all three ask 20 times a second: no guest error, no status error, no
   traceback in any daemon's log;
3. `kill -9` of a member a daemon watches, quorum held: a WARNING naming the lost member
   and the one the watch resumed on, within 2 s; no ERROR line; guests unaffected;
4. with etcd stopped, an admin API write is 503 with a one-line reason.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import pytest

from transparent_md.lab.fleet_load import GUEST, FleetUnderWrites, figures, run_load

pytestmark = [pytest.mark.netns, pytest.mark.slow]

FILLERS = 2000
WRITE_RATE = 100.0
WRITE_S = 30.0
STEADY_S = 3.0
WRITE_CLIENTS = 64
GUEST_RATE = 20.0
# Acceptance 3: the watch is back on another member within this long after the kill.
WATCH_RESUMED_WITHIN_S = 2.0
# How long the guests keep asking around the kill.
KILL_LOOP_S = 6.0


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    world = FleetUnderWrites(topology, tmp_path_factory.mktemp("under-writes")).build()
    try:
        world.load(FILLERS)
        world.start_daemons()
        yield world
    finally:
        world.stop()


def no_tracebacks(world: FleetUnderWrites) -> None:
    for h, log in enumerate(world.logs()):
        assert "Traceback" not in log, f"hv{h + 1}:\n{log[-4000:]}"


def test_100_writes_a_second_for_30_s_leave_guests_and_status_unharmed(world):
    result = run_load(world, steady_s=STEADY_S, write_s=WRITE_S, rate=WRITE_RATE,
                      clients=WRITE_CLIENTS, guest_rate=GUEST_RATE, fillers=FILLERS)
    found = figures(result)
    print(json.dumps(found, indent=2))
    assert found["guest_errors"] == 0, found
    assert result.status["failed"] == [], result.status["failed"][:5]
    assert found["write_errors"] == 0, result.write_errors()[:5]
    # Every write of the 30 s was made and answered; how fast they went on this machine
    # (shared, loaded) is the bench's figure, not a pass mark here.
    assert found["write_ms"]["n"] == WRITE_RATE * WRITE_S, found
    no_tracebacks(world)


def watched_member(log: str) -> str:
    """The member a daemon's watch is on now (its last watch line)."""
    members = re.findall(r"fleet watch on member (\S+)|watch resumed on (\S+)", log)
    assert members, log[-2000:]
    first, resumed = members[-1]
    return first or resumed


def test_killing_the_watched_member_is_a_warning_and_guests_never_notice(world):
    victim_address = watched_member(world.logs()[0])
    member = next(m for m in world.etcd.members if victim_address.startswith(m.ip))
    before = [len(d.output) for d in world.daemons]
    guests = [world.topo.spawn(world.askers(h)[0],
                               [sys.executable, "-c", GUEST, str(KILL_LOOP_S), str(GUEST_RATE)],
                               stdout=subprocess.PIPE, text=True)
              for h in range(len(world.hvs))]
    time.sleep(KILL_LOOP_S / 3)
    killed_at = time.monotonic()
    world.etcd.kill_member(member)
    resumed = None
    while time.monotonic() - killed_at < WATCH_RESUMED_WITHIN_S:
        new = "".join(world.daemons[0].output[before[0]:])
        if "watch resumed on" in new:
            resumed = time.monotonic() - killed_at
            break
        time.sleep(0.01)
    samples = [json.loads(g.communicate(timeout=KILL_LOOP_S + 60)[0]) for g in guests]
    new_lines = ["".join(d.output[n:]) for d, n in zip(world.daemons, before, strict=True)]
    assert resumed is not None, new_lines[0]
    warning = next(line for line in new_lines[0].splitlines() if "watch resumed on" in line)
    assert "WARNING" in warning and victim_address in warning, warning
    assert watched_member(new_lines[0]) != victim_address
    for h, lines in enumerate(new_lines):
        assert " ERROR " not in lines and "Traceback" not in lines, f"hv{h + 1}:\n{lines}"
    for h, guest in enumerate(samples):
        assert guest and all(s[2] == 200 for s in guest), (h, [s for s in guest if s[2] != 200])
    world.etcd.start_member(member)
    world.etcd.wait_healthy(member)


def test_an_api_write_with_etcd_stopped_is_503_with_one_line(world):
    world.etcd.stop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(world.api_socket(0))
    body = json.dumps({"hostname": "while-down"}).encode()
    sock.sendall(b"PATCH /v1/instances/f-00001 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    sock.close()
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), reply
    error = json.loads(payload)["error"]
    assert "\n" not in error and "unreachable" in error, error
    no_tracebacks(world)
