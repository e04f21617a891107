"""Link events that no longer match the kernel: the attacher acts on what is true now.

The races are made real: the kernel's own RTM_NEWLINK message for a port is read, the
port is then changed (deleted, enslaved, moved), and only then does the attacher get the
message, as it does when a VM's tap goes away between the event and the attach, or when
a new bridge's sync has already attached a port whose older events are still queued.
"""

from __future__ import annotations

import ctypes
import itertools

import pytest
from pyroute2 import IPRoute

from transparent_md.datapath import layout, programs, tc
from transparent_md.datapath.bpf_syscall import BpfMap
from transparent_md.datapath.port_selection import PortSelection
from transparent_md.datapath.ports import GatewayRule, PortAttacher

pytestmark = pytest.mark.netns

BRIDGE, PORT, GATEWAY = "br0", "ghost", "10.0.0.1"
OTHER_BRIDGE, OTHER_GATEWAY = "br1", "10.0.1.1"
_serial = itertools.count()


@pytest.fixture()
def attacher(topology):
    ns = topology.add_ns(f"races{next(_serial)}")
    topology.ip(ns, f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up",
                f"link add {OTHER_BRIDGE} type bridge", f"link set {OTHER_BRIDGE} up")
    loaded = programs.load_programs()
    maps = {m: BpfMap(loaded.map_fd(m), owned=False) for m in (layout.MAP_PORTS, layout.MAP_ARP)}
    ipr = IPRoute(netns=ns)
    yield PortAttacher(PortSelection((BRIDGE, OTHER_BRIDGE)), loaded.port_fd,
                       maps[layout.MAP_PORTS], maps[layout.MAP_ARP],
                       [GatewayRule(BRIDGE, GATEWAY), GatewayRule(OTHER_BRIDGE, OTHER_GATEWAY)],
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


def gateway_answered(maps, ifindex: int, gateway: str) -> bool:
    return bool(maps[layout.MAP_ARP].lookup(layout.ArpKey(ifindex, layout.be32(gateway)),
                                            ctypes.c_uint8()))


def our_filter_ids(ipr, ifindex: int) -> list[int]:
    return tc.our_filter_ids(ipr, ifindex, tc.FilterPosition())


def test_a_stale_creation_event_does_not_cut_off_an_attached_port(attacher, topology):
    ports, ipr, maps, ns = attacher
    topology.ip(ns, f"link add {PORT} type veth peer name {PORT}-peer")
    (ifindex,) = ipr.link_lookup(ifname=PORT)
    (created,) = ipr.get_links(ifindex)  # the creation event: no master yet
    assert created.get_attr("IFLA_MASTER") is None
    topology.ip(ns, f"link set {PORT} master {BRIDGE}", f"link set {PORT} up")
    ports.sync(ipr)  # e.g. a new bridge's event: the port is attached from the kernel
    assert ifindex in ports.attached and our_filter_ids(ipr, ifindex)
    changes = []
    ports.on_change = changes.append

    ports.on_link_event(ipr, created)  # ...and only now its queued creation event

    assert ifindex in ports.attached and our_filter_ids(ipr, ifindex)
    assert changes == []  # not forgotten and re-attached: its MAC locks were kept
    assert gateway_answered(maps, ifindex, GATEWAY)


def attached_then_changed(attacher, topology, change: str) -> int:
    """PORT attached as a member of BRIDGE, then `ip link` `change`d, and the kernel's
    message about it handed to the attacher; PORT's ifindex."""
    ports, ipr, maps, ns = attacher
    topology.ip(ns, f"link add {PORT} type veth peer name {PORT}-peer",
                f"link set {PORT} master {BRIDGE}")
    ports.sync(ipr)
    (ifindex,) = ipr.link_lookup(ifname=PORT)
    assert our_filter_ids(ipr, ifindex) and gateway_answered(maps, ifindex, GATEWAY)
    topology.ip(ns, change)
    (event,) = ipr.get_links(ifindex)
    ports.on_link_event(ipr, event)
    return ifindex


def test_a_port_that_really_left_is_forgotten(attacher, topology):
    ports, ipr, maps, _ = attacher
    ifindex = attached_then_changed(attacher, topology, f"link set {PORT} nomaster")

    assert ports.attached == {} and our_filter_ids(ipr, ifindex) == []
    assert not gateway_answered(maps, ifindex, GATEWAY)


def test_a_port_moved_to_another_of_our_bridges_takes_that_bridges_gateway(attacher, topology):
    ports, ipr, maps, _ = attacher
    ifindex = attached_then_changed(attacher, topology, f"link set {PORT} master {OTHER_BRIDGE}")

    assert ports.attached[ifindex].bridge == OTHER_BRIDGE and our_filter_ids(ipr, ifindex)
    port = layout.Port()
    assert maps[layout.MAP_PORTS].lookup(ctypes.c_uint32(ifindex), port)
    assert port.bridge == OTHER_BRIDGE.encode()
    assert gateway_answered(maps, ifindex, OTHER_GATEWAY)
    assert not gateway_answered(maps, ifindex, GATEWAY)
