"""Issue 13, acceptance 1-3: two hypervisors, each with its own bridge, guest and
daemon, sharing their records through one etcd (started here, in a namespace of ours).
The tests run in order on one fleet: add, live migration, etcd outage and return."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.fleet.fleet_world import GUEST_ROUTES, Fleet

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# The promise: a change reaches every daemon within 1 s.
PROPAGATION_BOUND_S = 1.0
# The status file is rewritten every 2 s and the poller runs every 1 s.
STATUS_BOUND_S = 6.0


@pytest.fixture(scope="module")
def fleet(topology, tmp_path_factory):
    fleet = Fleet(topology, tmp_path_factory.mktemp("fleet"))
    fleet.start_daemon(0)
    fleet.start_daemon(1)
    yield fleet
    fleet.stop()


def mac(fleet: Fleet, index: int) -> str:
    return fleet.hvs[index].guests[f"g{index + 1}"].mac


def test_add_reaches_both_daemons_within_a_second_and_is_served(fleet):
    assert fleet.served(0)[0] == 404  # no record yet: the daemon answers, knows nobody
    fleet.add("i-one", "--mac", mac(fleet, 0))
    took = fleet.wait_cached("i-one", [0, 1], timeout=5.0)
    assert took < PROPAGATION_BOUND_S, took
    assert fleet.served(0) == (200, "i-one")
    # The record went to etcd as the import format, under PREFIX/instances/<id>.
    stored = json.loads(fleet.etcd.etcdctl("get", "--print-value-only",
                                           "/fleet/instances/i-one"))
    assert stored["instance_id"] == "i-one" and stored["mac"] == mac(fleet, 0)


def test_ambiguous_record_refused_fleet_wide(fleet):
    res = fleet.cli("instance", "add", "i-clash", "--mac", mac(fleet, 0), hv=1)
    assert res.returncode != 0
    assert "would answer the same guest as record i-one" in res.stderr
    assert "i-clash" not in fleet.cached_ids(0)


def test_live_migration_guest_served_on_hv2_with_no_record_change(fleet):
    hv1, hv2 = fleet.hvs
    before = fleet.cached_record(1, "i-one")
    revision = fleet.etcd.etcdctl("get", "/fleet/instances/i-one", "-w", "json")
    # The VM leaves hv1 (its port goes away) and arrives on hv2 with the same MAC.
    fleet.topo.ip(hv1.ns, "link del p0")
    hv2.guest("moved", bridge="br0", port="p1", addr="10.0.0.10/24",
              routes=["169.254.169.254/32 dev eth0"], mac=mac(fleet, 0))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # hv2's daemon attaches the new port
        reply = hv2.curl(hv2.guests["moved"].ns, "/latest/meta-data/instance-id")
        if reply[0] == 200:
            break
        time.sleep(0.1)
    assert reply == (200, "i-one")
    assert fleet.cached_record(1, "i-one") == before
    assert fleet.etcd.etcdctl("get", "/fleet/instances/i-one", "-w", "json") == revision


def test_etcd_down_guests_served_writes_refused_status_disconnected(fleet):
    fleet.add("i-two", "--mac", mac(fleet, 1))
    fleet.wait_cached("i-two", [0, 1], timeout=5.0)
    fleet.etcd.stop()
    assert fleet.served(1) == (200, "i-two")
    hv2 = fleet.hvs[1]
    assert hv2.curl(hv2.guests["moved"].ns, "/latest/meta-data/instance-id") == (200, "i-one")

    res = fleet.cli("instance", "add", "i-three", "--mac", "02:00:00:00:09:09")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "etcd is unreachable" in lines[0], res.stderr

    deadline = time.monotonic() + STATUS_BOUND_S
    while time.monotonic() < deadline:
        status = json.loads(fleet.topo.sh(hv2.ns, [sys.executable, "-m", "transparent_md",
                                                   "status", "--json"]).stdout or "{}")
        if status.get("store_connected") is False:
            break
        time.sleep(0.2)
    assert status.get("store_connected") is False, status
    assert fleet.metrics(1)["transparent_md_store_connected"] == 0
    text = fleet.topo.sh(hv2.ns, [sys.executable, "-m", "transparent_md", "status"]).stdout
    assert "DISCONNECTED" in text

    # A daemon started while etcd is down serves from its cache.
    fleet.daemons[1].stop()
    fleet.start_daemon(1)
    assert fleet.served(1) == (200, "i-two")


def test_etcd_back_change_reaches_both_within_a_second(fleet):
    fleet.etcd.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # both followers reconnect (retry every 0.5 s)
        if all(fleet.metrics(i).get("transparent_md_store_connected") == 1 for i in (0, 1)):
            break
        time.sleep(0.2)
    assert all(fleet.metrics(i)["transparent_md_store_connected"] == 1 for i in (0, 1))
    fleet.cli("instance", "update", "i-two", "--hostname", "after-outage")
    started = time.monotonic()
    while time.monotonic() - started < 5:
        records = [fleet.cached_record(i, "i-two") or "" for i in (0, 1)]
        if all("after-outage" in r for r in records):
            break
        time.sleep(0.02)
    took = time.monotonic() - started
    assert all("after-outage" in r for r in records), records
    assert took < PROPAGATION_BOUND_S, took
    assert fleet.served(1) == (200, "i-two")
    assert fleet.metrics(1)["transparent_md_store_revision_lag"] == 0


def test_a_port_binding_names_its_link_fleet_wide(fleet):
    """Issue 20 on the etcd backend: a binding written on hv1 carries the link's
    ifindex into etcd and every cache; a new link under the name is not served; parking
    reaches the daemons like any change."""
    hv1 = fleet.hvs[0]
    tap_mac = "02:00:00:00:01:07"
    hv1.guest("bound", bridge="br0", port="vnet5", addr="10.0.0.17/24", routes=GUEST_ROUTES,
              mac=tap_mac)
    fleet.add("i-link", "--mac", tap_mac, "--port", "vnet5", "--user-data-file", "/dev/null")
    fleet.wait_cached("i-link", [0, 1], timeout=5.0)
    ifindex = int(fleet.topo.sh(hv1.ns, ["cat", "/sys/class/net/vnet5/ifindex"]).stdout)
    stored = json.loads(fleet.etcd.etcdctl("get", "--print-value-only",
                                           "/fleet/instances/i-link"))
    assert (stored["port"], stored["port_ifindex"]) == ("vnet5", ifindex)
    assert json.loads(fleet.cached_record(1, "i-link"))["port_ifindex"] == ifindex
    guest = hv1.guests["bound"].ns
    assert wait_status(hv1, guest, 200) == (200, "i-link")
    # The tap goes and another VM gets the name, with the MAC: served nothing.
    fleet.topo.ip(hv1.ns, "link del vnet5")
    hv1.guest("newcomer", bridge="br0", port="vnet5", addr="10.0.0.17/24",
              routes=GUEST_ROUTES, mac=tap_mac)
    assert wait_status(hv1, hv1.guests["newcomer"].ns, 404)[0] == 404
    parked = fleet.cli("instance", "park", "i-link")
    assert parked.returncode == 0, parked.stderr
    deadline = time.monotonic() + 5
    while '"parked": true' not in (fleet.cached_record(1, "i-link") or ""):
        assert time.monotonic() < deadline, fleet.cached_record(1, "i-link")
        time.sleep(0.05)


def wait_status(hv, ns: str, status: int, timeout: float = 10.0) -> tuple[int, str]:
    """Ask until the answer has `status` (the daemon attaches a new port within a
    moment); the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        reply = hv.curl(ns, "/latest/meta-data/instance-id")
        if reply[0] == status or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


def test_a_warm_restart_serves_the_cache_the_moment_it_is_ready(fleet):
    """Issue 26: `ready` means served. A daemon restarted over its cache while etcd is up
    (the follower resynchronises in its thread meanwhile) answers its guest at once."""
    for _ in range(3):
        fleet.daemons[1].stop()
        daemon = fleet.start_daemon(1)
        assert fleet.served(1) == (200, "i-two"), daemon.log()
        assert "Traceback" not in daemon.log()
