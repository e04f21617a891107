"""The whole datapath with real namespaces, a real daemon and real curl in the guests,
on each datapath (tc and raw sockets: the `datapath` fixture).

One hypervisor namespace with two tenant bridges:
  br0: a real router (10.0.0.1), guest `a` (10.0.0.5, secondary 10.0.0.50, default via
       the router), guest `onlink` (10.0.0.7/32, only route 169.254.169.254 dev eth0),
       guest `forger` (its own MAC, claims a's 10.0.0.5)
  br1: no router; guest `b` (10.0.0.5 as well, default via 10.0.0.1 that only the
       daemon's --gateway ARP answer provides), guest `watcher` (10.0.0.8)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import FOREIGN_FILTER, write_records
from transparent_md.lab.hypervisor import Hypervisor, daemon_names
from transparent_md.process import stop_process

pytestmark = pytest.mark.netns

CONCURRENT_REQUESTS = 200
PORT_ATTACH_BOUND_S = 1.0  # the promise for ports that appear later

# Fired from inside a guest: N concurrent HTTP/1.0 requests, optionally from a given
# source address; prints {"bodies": {...counts...}, "errors": n}.
BURST = r"""
import asyncio, json, sys
n, path, source = int(sys.argv[1]), sys.argv[2], (sys.argv[3] or None)
async def one():
    r, w = await asyncio.open_connection("169.254.169.254", 80,
                                         local_addr=(source, 0) if source else None)
    w.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b" ")[1].decode() + " " + body.decode()
async def main():
    res = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    counts = {}
    for r in res:
        key = repr(r) if isinstance(r, BaseException) else r
        counts[key] = counts.get(key, 0) + 1
    print(json.dumps(counts))
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def world(datapath_topology, tmp_path_factory, datapath):
    topology = datapath_topology
    hv = Hypervisor(topology)
    hv.bridge("br0")
    hv.bridge("br1")
    router = hv.router("router", bridge="br0", port="prouter", addr="10.0.0.1/24")
    a = hv.guest("a", bridge="br0", port="pa", addr="10.0.0.5/24",
                 routes=["default via 10.0.0.1"])
    topology.ip(a.ns, "addr add 10.0.0.50/24 dev eth0")
    onlink = hv.guest("onlink", bridge="br0", port="ponlink", addr="10.0.0.7/32",
                      routes=["169.254.169.254/32 dev eth0"])
    hv.guest("forger", bridge="br0", port="pforger", addr="10.0.0.5/24",
                      routes=["default via 10.0.0.1"])
    hv.guest("b", bridge="br1", port="pb", addr="10.0.0.5/24",
                 routes=["default via 10.0.0.1"])
    hv.guest("watcher", bridge="br1", port="pwatch", addr="10.0.0.8/24")
    store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(store, [
        {"instance_id": "i-a", "mac": a.mac, "ip": "10.0.0.5"},
        {"instance_id": "i-a-secondary", "mac": a.mac, "ip": "10.0.0.50"},
        {"instance_id": "i-onlink", "mac": onlink.mac},
        {"instance_id": "i-b", "ip": "10.0.0.5", "bridge": "br1"},
        {"instance_id": "i-late", "ip": "10.0.0.9", "bridge": "br0"},
    ])
    # A foreign tc filter on a guest port, placed before the daemon starts.
    topology.sh(hv.ns, ["tc", "qdisc", "add", "dev", "pa", "clsact"], check=True)
    topology.sh(hv.ns, ["tc", "filter", "add", "dev", "pa", "ingress", *FOREIGN_FILTER],
                check=True)
    # The router answers TCP on 8080: other traffic must still reach it.
    topology.spawn(router.ns, [sys.executable, "-m", "http.server", "-b", "10.0.0.1", "8080"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = hv.start_daemon(["br0", "br1"], store, ["--gateway", "br1=10.0.0.1"],
                             datapath=datapath)
    hv.datapath = datapath
    yield hv, daemon, store
    daemon.stop()


def burst(hv: Hypervisor, ns: str, n: int, path: str, source: str = "") -> subprocess.Popen:
    return hv.topo.spawn(ns, [sys.executable, "-c", BURST, str(n), path, source],
                         stdout=subprocess.PIPE, text=True)


def counts(proc: subprocess.Popen) -> dict[str, int]:
    out, _ = proc.communicate(timeout=120)
    return json.loads(out)


def test_same_ip_on_two_bridges_never_sees_the_others_data(world):
    hv, _, _ = world
    path = "/latest/meta-data/instance-id"
    # Interleaved: both bursts run at the same time, each 200 concurrent connections.
    procs = [burst(hv, hv.guests[g].ns, CONCURRENT_REQUESTS, path) for g in ("a", "b")]
    got_a, got_b = (counts(p) for p in procs)
    assert got_a == {"200 i-a": CONCURRENT_REQUESTS}
    assert got_b == {"200 i-b": CONCURRENT_REQUESTS}


def test_secondary_address_on_one_port_is_told_apart(world):
    hv, _, _ = world
    path = "/latest/meta-data/instance-id"
    ns = hv.guests["a"].ns
    procs = [burst(hv, ns, 100, path, src) for src in ("10.0.0.5", "10.0.0.50")]
    primary, secondary = (counts(p) for p in procs)
    assert primary == {"200 i-a": 100}
    assert secondary == {"200 i-a-secondary": 100}


def test_onlink_route_guest_is_answered(world):
    hv, _, _ = world
    assert hv.curl(hv.guests["onlink"].ns, "/latest/meta-data/instance-id") == (200, "i-onlink")


def test_routerless_segment_is_answered_through_gateway_arp(world):
    hv, _, _ = world
    assert hv.curl(hv.guests["b"].ns, "/latest/meta-data/instance-id") == (200, "i-b")


def test_real_router_still_reachable_for_other_traffic(world):
    hv, _, _ = world
    ns = hv.guests["a"].ns
    ping = hv.topo.sh(ns, ["ping", "-c", "2", "-W", "2", "10.0.0.1"])
    assert ping.returncode == 0, ping.stdout
    res = hv.topo.sh(ns, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                          "http://10.0.0.1:8080/"])
    assert res.stdout == "200", res.stderr


def test_forged_ip_gets_nothing_of_the_owner(world):
    hv, _, _ = world
    # forger claims 10.0.0.5 on a's bridge, but i-a is bound to a's MAC as well
    code, body = hv.curl(hv.guests["forger"].ns, "/latest/meta-data/instance-id")
    assert code == 404 and "i-a" not in body


def test_unregistered_address_of_a_known_mac_gets_nothing(world):
    hv, _, _ = world
    ns = hv.guests["a"].ns
    hv.topo.ip(ns, "addr add 10.0.0.77/24 dev eth0")
    code, body = hv.curl(ns, "/latest/meta-data/instance-id", extra=["--interface", "10.0.0.77"])
    assert code == 404 and "i-a" not in body


def test_port_added_while_running_is_served(world):
    hv, daemon, _ = world
    late = hv.guest("late", bridge="br0", port="plate", addr="10.0.0.9/24",
                    routes=["default via 10.0.0.1"])
    created = time.monotonic()
    while not hv.serves_port("plate", hv.datapath):
        assert time.monotonic() - created < PORT_ATTACH_BOUND_S, daemon.log()
        time.sleep(0.02)
    assert hv.curl(late.ns, "/latest/meta-data/instance-id") == (200, "i-late")


def test_removed_port_is_forgotten(world):
    hv, daemon, _ = world
    hv.guest("gone", bridge="br0", port="pgone", addr="10.0.0.10/24")
    deadline = time.monotonic() + 10
    while not hv.serves_port("pgone", hv.datapath) and time.monotonic() < deadline:
        time.sleep(0.05)
    hv.topo.ip(hv.ns, "link del pgone")
    deadline = time.monotonic() + 10
    while "forgot port pgone" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "forgot port pgone" in daemon.log()


def test_routerless_guests_offlink_traffic_is_not_flooded_to_neighbours(world):
    hv, _, _ = world
    b, watcher = hv.guests["b"], hv.guests["watcher"]
    capture = hv.topo.spawn(watcher.ns, ["tcpdump", "-i", "eth0", "--immediate-mode", "-n",
                                         "-l", "udp port 9999"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in capture.stderr:
        if "listening on" in line:
            break
    send = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.sendto(b'x', (sys.argv[1], 9999))")
    # Off-link (an address the watcher holds, but b must route to it): goes to the
    # gateway MAC the daemon answered with, and must not be flooded to the watcher.
    hv.topo.ip(watcher.ns, "addr add 192.168.77.1/32 dev lo")
    hv.topo.ip(b.ns, "route add 192.168.77.0/24 via 10.0.0.1")
    hv.topo.sh(b.ns, [sys.executable, "-c", send, "192.168.77.1"], check=True)
    # Control, sent last: on-link to the watcher itself is delivered. Once the capture
    # shows it, the off-link datagram sent before it would have shown too.
    hv.topo.sh(b.ns, [sys.executable, "-c", send, watcher.ip], check=True)
    seen = []
    deadline = time.monotonic() + 10
    for line in capture.stdout:
        seen.append(line)
        if f"> {watcher.ip}.9999" in line or time.monotonic() > deadline:
            break
    stop_process(capture)
    seen_text = "".join(seen)
    assert f"> {watcher.ip}.9999" in seen_text, seen_text
    assert "192.168.77.1" not in seen_text, seen_text


def test_replies_to_many_identities_share_one_neighbour_entry(world):
    """The responder namespace reaches every shadow address through one next hop: the
    kernel's ARP table, shared by all namespaces, holds one entry for it, not one per
    guest (past about a thousand guests that table refused more: replies were lost)."""
    hv, daemon, _ = world
    path = "/latest/meta-data/instance-id"
    for guest, source in (("a", "10.0.0.5"), ("a", "10.0.0.50"), ("b", ""), ("onlink", "")):
        assert counts(burst(hv, hv.guests[guest].ns, 2, path, source)) != {}
    res = subprocess.run(
        daemon.in_responder_netns(daemon_names(hv.ns).responder_netns,
                                  ["ip", "-4", "neigh", "show", "nud", "all"]),
        capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    entries = res.stdout.splitlines()
    assert len(entries) == 1, entries
