"""A port that disappears while it is being attached is skipped and leaves nothing.

The race is made real: the kernel's own RTM_NEWLINK message for a bridge member is
read, the member is deleted, and only then does the attacher receive the message, as
it would when a VM's tap goes away between the event and the attach.
"""

from __future__ import annotations

import ctypes

import pytest
from pyroute2 import IPRoute

from transparent_md.datapath import layout, programs, tc
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.datapath.port_selection import PortSelection
from transparent_md.datapath.ports import GatewayRule, PortAttacher

pytestmark = pytest.mark.netns

BRIDGE, PORT, GATEWAY = "br0", "ghost", "10.0.0.1"


@pytest.fixture()
def attacher(topology):
    ns = topology.add_ns("vanish")
    topology.ip(ns, f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up")
    loaded = programs.load_programs()
    maps = {m: BpfMap(loaded.map_fd(m), owned=False) for m in (layout.MAP_PORTS, layout.MAP_ARP)}
    ipr = IPRoute(netns=ns)
    yield PortAttacher(PortSelection((BRIDGE,)), loaded.port_fd, maps[layout.MAP_PORTS],
                       maps[layout.MAP_ARP], [GatewayRule(BRIDGE, GATEWAY)],
                       tc.FilterPosition()), ipr, maps, ns
    ipr.close()
    loaded.bpf.cleanup()


def test_vanished_port_is_skipped_and_its_map_entries_removed(attacher, topology):
    ports, ipr, maps, ns = attacher
    ports.sync(ipr)  # learns the bridge; no members yet
    topology.ip(ns, f"link add {PORT} type veth peer name {PORT}-peer",
                f"link set {PORT} master {BRIDGE}")
    (ifindex,) = ipr.link_lookup(ifname=PORT)
    (event,) = ipr.get_links(ifindex)
    # A new member of our bridge: without the delete below, this attaches the port.
    assert event["event"] == "RTM_NEWLINK"
    assert event.get_attr("IFLA_MASTER") == ipr.link_lookup(ifname=BRIDGE)[0]
    topology.ip(ns, f"link del {PORT}")

    ports.on_link_event(ipr, event)

    assert ports.attached == {}
    assert not maps[layout.MAP_PORTS].lookup(ctypes.c_uint32(ifindex), layout.Port())
    key = layout.ArpKey(ifindex, layout.be32(GATEWAY))
    assert not maps[layout.MAP_ARP].lookup(key, ctypes.c_uint8())
