"""Red team, issue 20 follow-up: a port binding is (name, ifindex), and an ifindex can
come back.

docs/records.md says Linux numbers each new link with the next ifindex and never hands a
freed one out again, so a tap made again under the same name is another link. That
holds for links the kernel numbers. It does not hold for a link created with an
explicit number (`ip link add NAME index N`, IFLA_NEW_IFINDEX, as checkpoint/restore
tools do) or moved in from another network namespace (it keeps its number there when
that number is free here): such a link, given the bound port's name, *is* the bound port
as far as the binding can tell. Only root on the hypervisor (or a VM/container manager
doing so) can make one, never a guest; this test shows the limit of the claim. The
binding is left unparked here, as `instance bind` without a stop hook leaves it.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.hostile.world import METADATA_ROUTE, build_world

pytestmark = pytest.mark.netns

STORE_CHANGE_S = 10.0


@pytest.fixture(scope="module")
def world(topology, tmp_path_factory):
    w = build_world(topology, tmp_path_factory.mktemp("ifindex"))
    w.start()
    yield w
    w.stop()


@pytest.mark.xfail(strict=True, reason="a link moved in from another namespace keeps its "
                   "ifindex: named as the bound port, it is served the record (root only)")
def test_a_link_that_brings_the_bound_ifindex_back_is_not_the_bound_port(world):
    w = world
    victim = w.add_guest("vic", "br0", record=False)
    added = w.cli("instance", "add", "i-0vic", "--port", victim.port, "--bridge", "br0",
                  "--mac", victim.mac, "--ip", victim.ip, "--store", w.store)
    assert added.returncode == 0, added.stderr
    deadline = time.monotonic() + STORE_CHANGE_S
    while w.curl("vic")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert w.curl("vic") == (200, "i-0vic"), w.log_tail()
    shown = w.topo.sh(w.hv.ns, ["ip", "-j", "link", "show", victim.port])
    ifindex = json.loads(shown.stdout)[0]["ifindex"]

    w.remove_port(victim.port)  # the VM stops; nothing parks the record
    # Elsewhere, a link is made with the freed number and moved in under the old name.
    elsewhere = w.topo.add_ns("elsewhere")
    other = w.topo.add_ns("other")
    w.topo.ip(elsewhere, f"link add {victim.port} index {ifindex} type veth peer name eth0 "
              f"netns {other}", f"link set {victim.port} netns {w.hv.ns}")
    w.topo.ip(w.hv.ns, f"link set {victim.port} master br0", f"link set {victim.port} up")
    w.topo.ip(other, f"link set eth0 address {victim.mac}", f"addr add {victim.ip}/24 dev eth0",
              "link set eth0 up", f"route add {METADATA_ROUTE}")
    shown = w.topo.sh(w.hv.ns, ["ip", "-j", "link", "show", victim.port])
    assert json.loads(shown.stdout)[0]["ifindex"] == ifindex
    deadline = time.monotonic() + STORE_CHANGE_S
    got = w.hv.curl(other, "/latest/meta-data/instance-id", timeout=2)
    while got[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        got = w.hv.curl(other, "/latest/meta-data/instance-id", timeout=2)
    assert got != (200, "i-0vic"), w.log_tail()
