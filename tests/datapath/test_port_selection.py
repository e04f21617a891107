"""Only guest-facing ports get our filter: taps and veths, never an uplink.

A VXLAN device stands in for the physical uplink (this kernel has no 8021q or bonding);
it sits on the same bridge as the guests and must stay untouched, while --port,
--exclude-port and bridge globs pick exactly what they say.
"""

from __future__ import annotations

import sys
import time

import pytest

from tests.conftest import DATAPATHS, write_records
from transparent_md.lab.hypervisor import Hypervisor

pytestmark = pytest.mark.netns

FOLLOW_WITHIN_S = 5.0
PATH = "/latest/meta-data/instance-id"


@pytest.fixture(scope="module")
def hv(topology, tmp_path_factory):
    hv = Hypervisor(topology)
    for bridge in ("br0", "qbr-a", "qbr-b"):
        hv.bridge(bridge)
    guests = {
        "g0": hv.guest("g0", bridge="br0", port="tap-g0", addr="10.0.0.10/24",
                       routes=["169.254.169.254/32 dev eth0"]),
        "g1": hv.guest("g1", bridge="br0", port="vm-g1", addr="10.0.0.11/24",
                       routes=["169.254.169.254/32 dev eth0"]),
        "ga": hv.guest("ga", bridge="qbr-a", port="pa", addr="10.0.1.10/24",
                       routes=["169.254.169.254/32 dev eth0"]),
        "gb": hv.guest("gb", bridge="qbr-b", port="pb", addr="10.0.2.10/24",
                       routes=["169.254.169.254/32 dev eth0"]),
    }
    # The "uplink": a VXLAN device on br0, as a physical NIC would be.
    topology.ip(hv.ns, "link add vx0 type vxlan id 42 dstport 4789 local 127.0.0.1",
                "link set vx0 master br0", "link set vx0 up")
    hv.store = str(tmp_path_factory.mktemp("store") / "instances.db")
    write_records(hv.store, [{"instance_id": f"i-{role}", "mac": g.mac}
                             for role, g in guests.items()])
    return hv


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_default_attaches_guest_ports_and_leaves_the_uplink_alone(hv, datapath):
    daemon = hv.start_daemon(["br0"], hv.store, datapath=datapath)
    try:
        assert hv.serves_port("tap-g0", datapath) and hv.serves_port("vm-g1", datapath)
        assert not hv.serves_port("vx0", datapath)
        if datapath == "tc":
            assert len(hv.our_filters("tap-g0")) == 1 and len(hv.our_filters("vm-g1")) == 1
        assert hv.curl(hv.guests["g0"].ns, PATH) == (200, "i-g0")
    finally:
        assert daemon.stop() == 0


def test_port_and_exclude_port_globs(hv):
    daemon = hv.start_daemon(["br0"], hv.store, ["--port", "tap-*", "--port", "vx*",
                                                 "--exclude-port", "vx*"])
    try:
        assert len(hv.our_filters("tap-g0")) == 1
        assert hv.our_filters("vm-g1") == [] and hv.our_filters("vx0") == []
    finally:
        assert daemon.stop() == 0


def test_bridge_glob_follows_matching_bridges_as_they_appear(hv):
    daemon = hv.start_daemon(["qbr-*"], hv.store)
    try:
        assert len(hv.our_filters("pa")) == 1 and len(hv.our_filters("pb")) == 1
        assert hv.our_filters("tap-g0") == []
        assert hv.curl(hv.guests["gb"].ns, PATH) == (200, "i-gb")
        # A new matching bridge with a guest, after start: followed.
        hv.bridge("qbr-c")
        gc = hv.guest("gc", bridge="qbr-c", port="pc", addr="10.0.3.10/24",
                      routes=["169.254.169.254/32 dev eth0"])
        write_records(hv.store, [{"instance_id": "i-gc", "mac": gc.mac}])
        # Followed within a few seconds (one clean CI run saw a single early 404 here).
        deadline = time.monotonic() + FOLLOW_WITHIN_S
        while (got := hv.curl(gc.ns, PATH, timeout=5)) != (200, "i-gc") and (
                time.monotonic() < deadline):
            time.sleep(0.2)
        assert got == (200, "i-gc")
        assert len(hv.our_filters("pc")) == 1
        # Never dropped and re-attached on the way (a stale event once made it flap).
        assert "forgot port pc" not in daemon.log()
    finally:
        assert daemon.stop() == 0


def test_an_exact_bridge_that_does_not_exist_is_still_an_error(hv):
    res = hv.topo.sh(hv.ns, [sys.executable, "-m", "transparent_md", "run", "--bridge", "nope0",
                             "--bridge", "qbr-*", "--store", hv.store], timeout=60)
    assert res.returncode == 2 and "bridge 'nope0' does not exist" in res.stderr
